"""What a job costs on AWS: the records' billing (what each worker was billed) priced from a dated table.

Cost is a pure function of result-record headers and ``Prices``, so the same code prices a live job
(``Executor.cost()``), a job read back from storage alone (``dask-wren jobs``), a running total
(``call_cost``: the progress bar, ``wren.budget``) and a job not yet run (``estimate``).

Priced: Lambda duration (each record's ``billing.ms``, plus ``init_ms`` of cold starts, which Lambda
bills since August 2025) x memory at the first-tier GB-second rate; Lambda requests (one per
invocation, carried by its ``first_of_invocation`` record); S3 requests by price class: the workers'
from their records (``requests``), the host's as it makes them (submit PUTs, record GETs, LIST rounds).
Not priced (``NOT_PRICED``): S3 storage, data transfer, CloudWatch Logs, the free tier and volume
tiers; nor attempts whose record has no billing (the host wrote it: the worker died or was lost) or
was never read (the losing attempt of a backup).  A local job is priced as it would cost on Lambda.
"""

from __future__ import annotations

import functools
import math
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import dask.config
import yaml

from dask_wren.errors import ConfigError

PRICES_FILE = os.path.join(os.path.dirname(__file__), "prices.yaml")
#: The region a record without one (local workers, the offline stand-in) is priced in, unless
#: ``wren.cost-region`` says otherwise.
DEFAULT_REGION = "us-east-1"
NOT_PRICED = (
    "not priced: S3 storage (GB-month), data transfer, CloudWatch Logs; free tier and volume tiers not applied"
)
_MB_MS_PER_GB_S = 1024 * 1000


@dataclass(frozen=True)
class Rates:
    """One region's and architecture's prices, in dollars per unit."""

    gb_second: float
    request: float  # one Lambda request (invocation)
    s3_put: float  # one S3 PUT, COPY, POST or LIST request
    s3_get: float  # one S3 GET or SELECT request


@dataclass(frozen=True)
class Prices:
    """The price table: shipped (``prices.yaml``, dated) with ``wren.prices`` merged over it."""

    regions: Mapping[str, Any]
    as_of: str
    sources: tuple[str, ...]
    default_region: str = DEFAULT_REGION
    _rates: dict[tuple[str, str], Rates] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, settings: Any = None) -> Prices:
        """The shipped table with the ``wren.prices`` override of ``settings`` (default: dask.config)."""
        shipped = _shipped()
        if settings is not None:
            override, region = settings.prices, settings.cost_region
        else:
            override, region = dask.config.get("wren.prices", None), dask.config.get("wren.cost-region", None)
        return cls(_merge(shipped["regions"], override or {}), str(shipped["as_of"]), tuple(shipped["sources"]), region or DEFAULT_REGION)

    def rates(self, region: str | None, arch: str) -> Rates:
        """The prices of ``region`` (None: ``default_region``) and ``arch``; ``ConfigError`` if the table has none."""
        key = (region or self.default_region, arch)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = self._lookup(*key)
        return rates

    def _lookup(self, region: str, arch: str) -> Rates:
        table = self.regions.get(region) or {}
        lam = (table.get("lambda") or {}).get(arch) or {}
        s3 = table.get("s3") or {}
        figures = [_figure(lam, "gb-second"), _figure(lam, "request-per-million"), _figure(s3, "put-per-1000"), _figure(s3, "get-per-1000")]
        if None in figures:
            raise ConfigError(
                f"dask-wren's price table (as of {self.as_of}) has no complete prices for region {region!r}, "
                f"architecture {arch!r} (it has {sorted(self.regions)}): add them from {' and '.join(self.sources)} "
                f"with the setting wren.prices, merged over the table, e.g. in ~/.config/dask/wren.yaml:\n"
                f"wren:\n  prices:\n    {region}:\n      lambda: {{{arch}: {{gb-second: ..., request-per-million: ...}}}}\n"
                "      s3: {put-per-1000: ..., get-per-1000: ...}\n"
                "(or price local jobs and records without a region in another region: wren.cost-region)"
            )
        gb_second, per_million, put, get = (float(x) for x in figures)
        return Rates(gb_second, per_million / 1e6, put / 1000, get / 1000)


@functools.lru_cache(maxsize=1)
def _shipped() -> dict[str, Any]:
    with open(PRICES_FILE) as f:
        return yaml.safe_load(f)


def _figure(table: Mapping[str, Any], name: str) -> Any:
    """A price by its name in the table (``gb-second``; config written as ``gb_second`` works too)."""
    value = table.get(name)
    return table.get(name.replace("-", "_")) if value is None else value


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def host_arch() -> str:
    """This machine's architecture, as Lambda names it."""
    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


class Tally:
    """Running sums over records and the host's requests.  ``add`` is cheap (the monitor thread
    calls it for each record it reads; no lock: one writer, and readers take a moment's sums)."""

    __slots__ = ("calls", "unbilled", "groups", "worker_get", "worker_put", "host_get", "host_put", "host_list")

    def __init__(self) -> None:
        self.calls = 0  # records
        self.unbilled = 0  # records without billing: written by the host for a worker it lost
        self.groups: dict[tuple[str | None, str, int], list[int]] = {}  # (region, arch, MB) -> [invocations, ms, init ms]
        self.worker_get = self.worker_put = 0
        self.host_get = self.host_put = self.host_list = 0

    def add(self, header: Mapping[str, Any]) -> None:
        self.calls += 1
        requests = header.get("requests")
        if requests:
            self.worker_get += requests.get("get", 0)
            self.worker_put += requests.get("put", 0)
        billing = header.get("billing")
        if billing is None:
            self.unbilled += 1
            return
        key = (billing.get("region"), billing.get("arch") or "x86_64", billing.get("memory_mb") or 0)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = [0, 0, 0]
        if billing.get("first_of_invocation"):
            group[0] += 1
        group[1] += billing.get("ms", 0)
        group[2] += billing.get("init_ms", 0)

    def add_host(self, requests: Mapping[str, int] | None) -> None:
        """The host's own requests: ``{"put": n, "get": n, "list": n}`` (any of them)."""
        if requests:
            self.host_put += requests.get("put", 0)
            self.host_get += requests.get("get", 0)
            self.host_list += requests.get("list", 0)

    def merge(self, other: Tally) -> None:
        self.calls += other.calls
        self.unbilled += other.unbilled
        for key, (invocations, ms, init_ms) in list(other.groups.items()):
            group = self.groups.setdefault(key, [0, 0, 0])
            group[0] += invocations
            group[1] += ms
            group[2] += init_ms
        self.worker_get += other.worker_get
        self.worker_put += other.worker_put
        self.host_get += other.host_get
        self.host_put += other.host_put
        self.host_list += other.host_list


@dataclass
class CostSummary:
    """What a job (or an executor's jobs) cost, or would cost, by charge; dollars unless named otherwise."""

    calls: int  # records priced (attempts)
    invocations: int
    billed_ms: int  # Lambda duration, INIT excluded
    init_ms: int  # INIT phases of cold starts
    gb_seconds: float  # both, times memory
    compute: float  # the GB-seconds' charge
    lambda_requests: float  # the invocations' request charge
    s3_requests: dict[str, int]  # by price class: "put" (PUT, COPY, POST, LIST), "get" (GET, SELECT)
    s3_charges: dict[str, float]
    total: float
    #: region, arch, memory_mb (each a value, or a list when the records differ), as_of (the
    #: table's date), would_cost (a local job priced as on Lambda), estimate (no job ran)
    priced_as: dict[str, Any]
    unbilled: int = 0  # attempts without billing (their worker died or was lost): not priced

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        p = self.priced_as
        where = f"{_names(p['region'])}, {_names(p['arch'])}, {_names(p['memory_mb'])} MB; prices as of {p['as_of']}"
        if p.get("estimate"):
            title = f"Estimate on AWS Lambda ({where})"
        elif p.get("would_cost"):
            title = f"Would cost on Lambda ({where}); it ran on local workers"
        else:
            title = f"Cost on AWS Lambda ({where})"
        init = f", INIT {self.init_ms / 1000:,.3f} s" if self.init_ms else ""
        rows = [
            ("Lambda requests", f"{self.invocations:,} invocations", self.lambda_requests),
            ("Lambda duration", f"{self.gb_seconds:,.3f} GB-s ({self.billed_ms / 1000:,.3f} s{init})", self.compute),
            ("S3 PUT/COPY/POST/LIST", f"{self.s3_requests['put']:,} requests", self.s3_charges["put"]),
            ("S3 GET/SELECT", f"{self.s3_requests['get']:,} requests", self.s3_charges["get"]),
        ]
        width = max(len(r[1]) for r in rows)
        decimals = max(_decimals(cost) for _, _, cost in rows)  # one column, its points aligned
        lines = [title] + [f"  {name:<22} {what:<{width}}  {money(cost, decimals):>14}" for name, what, cost in rows]
        lines.append(f"  {'total':<22} {'':<{width}}  {money(self.total, decimals):>14}")
        if self.unbilled:
            lines.append(
                f"  {self.unbilled:,} attempt{'s carry' if self.unbilled != 1 else ' carries'} no billing "
                "(its worker died or was lost): not priced"
            )
        if p.get("estimate"):
            lines.append(
                "  leaves out: cold starts' INIT, the workers' function loads (one GET per cold worker), LIST rounds "
                "past one per 1,000 results, retries and backups"
            )
        lines.append(f"  {NOT_PRICED}")
        return "\n".join(lines)


def money(dollars: float, decimals: int | None = None) -> str:
    """Dollars with at least 3 significant digits (a job of a few calls costs millionths of a dollar)."""
    return f"${dollars:,.{_decimals(dollars) if decimals is None else decimals}f}"


def _decimals(dollars: float) -> int:
    return 2 if dollars == 0 else min(12, max(2, 2 - math.floor(math.log10(abs(dollars)))))


def _names(values: list[Any]) -> str:
    return "/".join(str(v) for v in values) if values else "?"


def call_cost(header: Mapping[str, Any], prices: Prices) -> float:
    """What one record's attempt cost, in dollars: its share of duration (and INIT), its invocation's
    request if it is the first record of it, and the worker's S3 requests.  0 without billing."""
    billing = header.get("billing")
    if billing is None:
        return 0.0
    rates = prices.rates(billing.get("region"), billing.get("arch") or "x86_64")
    cost = (billing.get("ms", 0) + billing.get("init_ms", 0)) * (billing.get("memory_mb") or 0) / _MB_MS_PER_GB_S * rates.gb_second
    if billing.get("first_of_invocation"):
        cost += rates.request
    requests = header.get("requests")
    if requests:
        cost += requests.get("put", 0) * rates.s3_put + requests.get("get", 0) * rates.s3_get
    return cost


def summarize(
    headers: Iterable[Mapping[str, Any]], *, host_requests: Mapping[str, int] | None = None, prices: Prices,
    local: bool = False, memory_mb: int | None = None,
) -> CostSummary:
    """Price the records ``headers`` (every attempt's) and the host's requests (``{"put", "get", "list"}``).

    ``local``: the records come from local workers: priced as on Lambda with ``memory_mb`` (their
    own memory when None) in ``prices.default_region`` (``wren.cost-region``)."""
    tally = Tally()
    for header in headers:
        tally.add(header)
    tally.add_host(host_requests)
    return price(tally, prices, local=local, memory_mb=memory_mb)


def price(tally: Tally, prices: Prices, *, local: bool = False, memory_mb: int | None = None, estimate: bool = False) -> CostSummary:
    """The summary of a ``Tally`` (see ``summarize``)."""
    invocations = billed_ms = init_ms = 0
    mb_ms = compute = requests = 0.0
    regions: list[Any] = []
    archs: list[str] = []
    memories: list[int] = []
    for (region, arch, memory), (n, ms, init) in sorted(list(tally.groups.items()), key=repr):
        if local:
            region, memory = prices.default_region, memory_mb or memory
        region = region or prices.default_region
        rates = prices.rates(region, arch)
        invocations += n
        billed_ms += ms
        init_ms += init
        mb_ms += (ms + init) * memory
        compute += (ms + init) * memory / _MB_MS_PER_GB_S * rates.gb_second
        requests += n * rates.request
        for values, value in ((regions, region), (archs, arch), (memories, memory)):
            if value not in values:
                values.append(value)
    if not regions:  # no billed record yet
        regions, archs = [prices.default_region], [host_arch()]
        memories = [memory_mb] if memory_mb else []
    s3 = prices.rates(regions[0], archs[0])  # one job runs in one region; so does its bucket
    s3_requests = {"put": tally.worker_put + tally.host_put + tally.host_list, "get": tally.worker_get + tally.host_get}
    s3_charges = {"put": s3_requests["put"] * s3.s3_put, "get": s3_requests["get"] * s3.s3_get}
    return CostSummary(
        calls=tally.calls, invocations=invocations, billed_ms=billed_ms, init_ms=init_ms,
        gb_seconds=mb_ms / _MB_MS_PER_GB_S, compute=compute, lambda_requests=requests,
        s3_requests=s3_requests, s3_charges=s3_charges, total=compute + requests + s3_charges["put"] + s3_charges["get"],
        priced_as={
            "region": regions, "arch": archs, "memory_mb": memories, "as_of": prices.as_of,
            "would_cost": local, "estimate": estimate,
        },
        unbilled=tally.unbilled,
    )


def estimate(
    n_calls: int, seconds_per_call: float, memory_mb: int = 2048, arch: str = "x86_64", region: str | None = None,
    *, chunksize: int = 1, prices: Prices | None = None,
) -> CostSummary:
    """What ``n_calls`` calls of ``seconds_per_call`` each would cost on Lambda, before anything runs.

    Counts one invocation per ``chunksize`` calls, each call's duration rounded up to the ms, one
    argument GET and one record PUT per call on the workers, and on the host the job's PUTs
    (function, arguments per 1,000 calls, manifest), one record GET per call and one LIST per
    1,000 results.  Leaves out cold starts' INIT, function loads, retries and backups: a floor."""
    if n_calls < 0 or seconds_per_call < 0 or chunksize < 1:
        raise ValueError("estimate() needs n_calls >= 0, seconds_per_call >= 0 and chunksize >= 1")
    prices = prices or Prices.load()
    tally = Tally()
    tally.calls = n_calls
    if n_calls:
        tally.groups[(region, arch, memory_mb)] = [-(-n_calls // chunksize), n_calls * math.ceil(seconds_per_call * 1000), 0]
    tally.worker_get, tally.worker_put = n_calls, n_calls
    blocks = -(-n_calls // 1000)
    tally.add_host({"put": 2 + blocks, "get": n_calls, "list": max(1, blocks)} if n_calls else None)
    summary = price(tally, prices, estimate=True)
    if not n_calls:
        summary.priced_as.update(region=[region or prices.default_region], arch=[arch], memory_mb=[memory_mb])
    return summary
