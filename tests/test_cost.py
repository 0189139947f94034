"""What a job costs: records' billing priced from the shipped table, checked against AWS's published prices.

The published prices are written out here (aws.amazon.com/lambda/pricing, aws.amazon.com/s3/pricing;
us-east-1, and S3's in the other shipped regions), not read from prices.yaml: a wrong figure in the table fails these tests."""

import math

import dask
import pytest

import dask_wren
from dask_wren.config import Settings
from dask_wren.cost import Prices, Tally, call_cost, money, summarize
from lambda_worker import protocol
from lambda_worker.signing import SigningKey

pytestmark = pytest.mark.timeout(120)

X86_GB_SECOND = 0.0000166667
ARM_GB_SECOND = 0.0000133334
REQUEST = 0.20 / 1_000_000
S3_PUT = 0.005 / 1000
S3_GET = 0.0004 / 1000


def billed(ms, *, init_ms=0, memory_mb=2048, arch="x86_64", region="us-east-1", first=True, gets=1, puts=1, call=0):
    return {
        "job_id": "j", "call_id": protocol.call_id_for(call), "attempt": 0, "status": protocol.STATUS_OK,
        "billing": {
            "ms": ms, "init_ms": init_ms, "memory_mb": memory_mb, "arch": arch, "region": region,
            "first_of_invocation": first,
        },
        "requests": {"get": gets, "put": puts},
    }


def through_storage(headers):
    """Each header as the host reads it: encoded into a signed record and decoded again."""
    key = SigningKey.generate()
    out = []
    for header in headers:
        storage_key = protocol.result_key("p", "j", header["call_id"])
        record = protocol.encode_result(header, b"payload", key=key, storage_key=storage_key)
        out.append(protocol.decode_header(record, key=key, storage_key=storage_key)[0])
    return out


def test_summary_equals_the_hand_computation_to_the_cent():
    """1,000 calls of 100 s at 10,240 MB, 40 of them cold (INIT 1.5 s), the last 200 in 2-call chunks."""
    headers = []
    for i in range(1000):
        first = i < 800 or i % 2 == 0
        headers.append(billed(100_000, init_ms=1500 if i < 40 else 0, memory_mb=10240, first=first, gets=2, puts=1, call=i))
    summary = summarize(
        through_storage(headers), host_requests={"put": 3, "get": 1000, "list": 7},
        prices=Prices.load(Settings.from_config()),
    )
    invocations = 800 + 100
    gb_seconds = (1000 * 100.0 + 40 * 1.5) * 10
    hand = {
        "compute": gb_seconds * X86_GB_SECOND,
        "requests": invocations * REQUEST,
        "put": (1000 + 3 + 7) * S3_PUT,
        "get": (2000 + 1000) * S3_GET,
    }
    hand_total = sum(hand.values())
    assert summary.invocations == invocations and summary.calls == 1000
    assert summary.gb_seconds == pytest.approx(gb_seconds)
    assert summary.s3_requests == {"put": 1010, "get": 3000}
    assert round(summary.total, 2) == round(hand_total, 2) == 16.68
    assert summary.compute == pytest.approx(hand["compute"], abs=1e-9)
    assert summary.lambda_requests == pytest.approx(hand["requests"], abs=1e-12)
    assert summary.s3_charges == pytest.approx({"put": hand["put"], "get": hand["get"]}, abs=1e-12)
    assert summary.priced_as["would_cost"] is False
    # call_cost is the same pricing, one record at a time (the budget and running totals use it)
    prices = Prices.load(Settings.from_config())
    per_call = sum(call_cost(h, prices) for h in headers)
    assert per_call + (3 + 7) * S3_PUT + 1000 * S3_GET == pytest.approx(summary.total, abs=1e-9)


def test_arm64_and_records_without_billing():
    prices = Prices.load(Settings.from_config())
    arm = billed(1000, memory_mb=1024, arch="arm64", gets=0, puts=0)
    assert call_cost(arm, prices) == pytest.approx(1.0 * ARM_GB_SECOND + REQUEST, abs=1e-15)
    lost = {"job_id": "j", "call_id": "0", "status": "failed", "error": {"kind": "worker_died"}}  # the host wrote it
    summary = summarize([arm, lost], prices=prices)
    assert summary.unbilled == 1 and summary.calls == 2 and call_cost(lost, prices) == 0
    assert "1 attempt carries no billing" in str(summary)


def test_estimate():
    summary = dask_wren.estimate(1000, 1.0, memory_mb=1024)
    assert summary.invocations == 1000
    assert summary.gb_seconds == pytest.approx(1000.0)
    assert summary.compute == pytest.approx(1000 * X86_GB_SECOND)
    assert summary.lambda_requests == pytest.approx(1000 * REQUEST)
    # workers: one argument GET and one record PUT a call; host: func, args, manifest, a GET per record, a LIST
    assert summary.s3_requests == {"put": 1000 + 3 + 1, "get": 2000}
    assert summary.priced_as["estimate"] and "Estimate" in str(summary) and "leaves out" in str(summary)
    # chunks share a request; a part of a millisecond is billed as a whole one; arm64 is cheaper
    chunked = dask_wren.estimate(1000, 0.0101, memory_mb=1024, chunksize=10)
    assert chunked.invocations == 100 and chunked.billed_ms == 1000 * 11
    assert dask_wren.estimate(10, 1.0, arch="arm64").compute == pytest.approx(10 * 2 * ARM_GB_SECOND)
    assert dask_wren.estimate(0, 1.0).total == 0


#: S3 Standard request prices per request (PUT class, GET class) in the other shipped regions;
#: Lambda's first-tier prices there are us-east-1's
S3_BY_REGION = {
    "us-east-2": (0.005 / 1000, 0.0004 / 1000),
    "us-west-2": (0.005 / 1000, 0.0004 / 1000),
    "eu-west-1": (0.005 / 1000, 0.0004 / 1000),
    "eu-central-1": (0.0054 / 1000, 0.00043 / 1000),
}


@pytest.mark.parametrize("region", sorted(S3_BY_REGION))
def test_the_other_shipped_regions_price_from_their_published_figures(region):
    put, get = S3_BY_REGION[region]
    e = dask_wren.estimate(1000, 1.0, memory_mb=1024, region=region)
    assert e.priced_as["region"] == [region]
    assert e.compute == pytest.approx(1000 * X86_GB_SECOND) and e.lambda_requests == pytest.approx(1000 * REQUEST)
    assert dask_wren.estimate(1000, 1.0, memory_mb=1024, arch="arm64", region=region).compute == pytest.approx(1000 * ARM_GB_SECOND)
    rates = Prices.load(Settings.from_config()).rates(region, "x86_64")
    assert (rates.s3_put, rates.s3_get) == (pytest.approx(put), pytest.approx(get))


def test_an_unknown_region_says_how_to_add_it_and_the_override_merges():
    with pytest.raises(dask_wren.ConfigError, match=r"(?s)region 'ap-east-1'.*wren\.prices.*\n    ap-east-1:"):
        dask_wren.estimate(10, 1.0, region="ap-east-1")
    table = {"ap-east-1": {"lambda": {"x86_64": {"gb-second": 0.00002, "request-per-million": 0.4}}, "s3": {"put-per-1000": 0.01, "get-per-1000": 0.001}}}
    override_us = {"us-east-1": {"lambda": {"x86_64": {"request-per-million": 1.0}}}}
    with dask.config.set({"wren.prices": {**table, **override_us}}):
        hk = dask_wren.estimate(10, 1.0, memory_mb=1024, region="ap-east-1")
        us = dask_wren.estimate(10, 1.0, memory_mb=1024)
    assert hk.compute == pytest.approx(10 * 0.00002) and hk.lambda_requests == pytest.approx(10 * 0.4e-6)
    # merged over the shipped table: the request price changed, the GB-second price stayed
    assert us.lambda_requests == pytest.approx(10e-6) and us.compute == pytest.approx(10 * X86_GB_SECOND)
    with dask.config.set({"wren.cost-region": "ap-east-1", "wren.prices": table}):
        assert dask_wren.estimate(1, 1.0).priced_as["region"] == ["ap-east-1"]


def test_money_keeps_sub_cent_digits():
    assert money(16.6812) == "$16.68"
    assert money(0.0412) == "$0.0412"
    assert money(0.0000002) == "$0.000000200"
    assert money(0) == "$0.00"


def test_tally_merges():
    a, b = Tally(), Tally()
    a.add(billed(10))
    b.add(billed(20, first=False))
    b.add_host({"put": 2, "list": 1})
    a.merge(b)
    assert a.groups == {("us-east-1", "x86_64", 2048): [1, 30, 0]} and a.host_put == 2 and a.host_list == 1


def test_local_job_would_cost_on_lambda_and_chunk_shares_add_up(tmp_path):
    """A local job's records carry billing; ``Executor.cost()`` prices them as Lambda would, at
    ``wren.local.memory-mb``; the records of a chunked invocation add up to its duration."""
    with dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=2, memory_mb=1024) as ex:
        futures = ex.map(abs, range(-12, 0), chunksize=3)
        assert [f.result() for f in futures] == list(range(12, 0, -1))
        summary = ex.cost()
    headers = [f.header for f in futures]
    bills = [h["billing"] for h in headers]
    assert all(b["memory_mb"] == 1024 and b["arch"] in ("x86_64", "arm64") for b in bills)
    assert sum(b["first_of_invocation"] for b in bills) == 4 == summary.invocations
    for start in range(0, 12, 3):  # one invocation: its shares add up to its duration (to its last record)
        chunk = headers[start : start + 3]
        assert chunk[0]["billing"]["first_of_invocation"] and not any(h["billing"]["first_of_invocation"] for h in chunk[1:])
        duration = (chunk[-1]["timings"]["worker_result_write"] - chunk[0]["timings"]["worker_invoked"]) * 1000
        assert abs(sum(h["billing"]["ms"] for h in chunk) - duration) <= 2
    cold = [b["init_ms"] for b in bills if b["init_ms"]]
    assert len(cold) <= 2 and all(h["timings"]["worker_cold"] for h in headers if h["billing"]["init_ms"])
    ms = sum(b["ms"] + b["init_ms"] for b in bills)
    arch_price = ARM_GB_SECOND if bills[0]["arch"] == "arm64" else X86_GB_SECOND
    assert summary.compute == pytest.approx(ms * 1.0 / 1000 * arch_price, abs=1e-12)
    assert summary.lambda_requests == pytest.approx(4 * REQUEST)
    # the workers' requests (a range GET and a PUT a call, the function once per worker) and the host's
    # (submit PUTs, the manifest, a GET per record, LIST rounds)
    worker_gets = sum(h["requests"]["get"] for h in headers)
    assert summary.s3_requests["get"] == worker_gets + 12
    assert summary.s3_requests["put"] >= 12 + 3
    assert summary.priced_as["would_cost"] and summary.priced_as["memory_mb"] == [1024]
    assert summary.priced_as["region"] == ["us-east-1"]
    text = str(summary)
    assert text.startswith("Would cost on Lambda (us-east-1") and "not priced: S3 storage" in text
    assert math.isclose(summary.as_dict()["total"], summary.total)


def test_the_handler_shares_an_invocation_out_over_its_records(monkeypatch):
    """Each record bills the invocation's duration so far (rounded up to the ms) less what the earlier
    records billed; the first carries the request and a cold start's INIT; memory comes from the context."""
    from lambda_worker import handler

    clock = [100.0]
    monkeypatch.setattr(handler.time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    context = type("Context", (), {"memory_limit_in_mb": "1769"})()  # Lambda's context gives a string
    meter = handler._Meter(100.0, 250, handler._memory_mb(context))
    bills = []
    for t in (100.0101, 100.0101, 100.5):
        clock[0] = t
        bills.append(meter.bill())
    assert [b["ms"] for b in bills] == [11, 0, 489] and sum(b["ms"] for b in bills) == 500
    assert [b["init_ms"] for b in bills] == [250, 0, 0]
    assert [b["first_of_invocation"] for b in bills] == [True, False, False]
    assert {(b["memory_mb"], b["region"], b["arch"]) for b in bills} == {(1769, "us-east-1", handler.ARCH)}
    assert handler._memory_mb(None) == 0 and 0 < handler.INIT_MS < 60_000
