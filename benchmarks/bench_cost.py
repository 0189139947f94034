"""What a job costs (issue 10, item 3): ``Executor.cost()`` of a 1,000-call job through the AWS stand-in,
next to a hand computation from the job's records in storage and AWS's published prices.

The stand-in (``dask_wren.testing.aws_standin``: moto's S3 server and a local Lambda endpoint) runs
the real handler, which writes into each record what Lambda would bill: the call's share of its
invocation's duration rounded up to the millisecond, a cold start's INIT, the function's memory
and architecture, and the worker's S3 requests.  The hand computation reads every attempt's
record back from storage alone (``dask_wren.jobs.load_job``) and prices it with the published
us-east-1 prices written out below, not with ``dask_wren/prices.yaml``; the host's own S3
requests (submit PUTs, record GETs, LIST rounds) are in no record, so both sides take them as the
executor counted them.  The two totals must agree to a millionth of a dollar.

    python benchmarks/bench_cost.py                 # 1,000 calls of 50 ms, 2,048 MB, 8 workers
    python benchmarks/bench_cost.py --quick         # 100 calls
"""

from __future__ import annotations

import argparse
import sys
import time

import dask_wren
from dask_wren.jobs import load_job
from dask_wren.testing import aws_standin
from lambda_worker import protocol

# aws.amazon.com/lambda/pricing and aws.amazon.com/s3/pricing, us-east-1, first tier
GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
REQUEST = 0.20 / 1_000_000
S3_PUT = 0.005 / 1000  # PUT, COPY, POST, LIST
S3_GET = 0.0004 / 1000  # GET, SELECT


def work(i: int) -> int:
    """The mapped function: 50 ms of sleep (``--work-ms``), as a call with real work waits."""
    time.sleep(WORK_S)
    return i * i


WORK_S = 0.05


def by_hand(headers: list[dict], host: dict[str, int]) -> dict[str, float]:
    """The job's charges from its records and the published prices, one line per charge."""
    gb_s = sum((h["billing"]["ms"] + h["billing"]["init_ms"]) / 1000 * h["billing"]["memory_mb"] / 1024 for h in headers)
    compute = sum(
        (h["billing"]["ms"] + h["billing"]["init_ms"]) / 1000 * h["billing"]["memory_mb"] / 1024 * GB_SECOND[h["billing"]["arch"]]
        for h in headers
    )
    invocations = sum(1 for h in headers if h["billing"]["first_of_invocation"])
    puts = sum(h["requests"]["put"] for h in headers) + host["put"]
    gets = sum(h["requests"]["get"] for h in headers) + host["get"]
    return {
        "invocations": invocations, "GB-s": gb_s, "compute": compute, "requests": invocations * REQUEST,
        "S3 PUT/LIST": puts, "S3 GET": gets, "S3 PUT $": puts * S3_PUT, "S3 GET $": gets * S3_GET,
        "total": compute + invocations * REQUEST + puts * S3_PUT + gets * S3_GET,
    }


def main() -> int:
    global WORK_S
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--work-ms", type=float, default=50)
    parser.add_argument("--workers", type=int, default=8, help="the stand-in function's concurrency")
    parser.add_argument("--memory-mb", type=int, default=2048, help="the stand-in function's memory")
    parser.add_argument("--quick", action="store_true", help="100 calls")
    args = parser.parse_args()
    calls = 100 if args.quick else args.calls
    WORK_S = args.work_ms / 1000
    began = time.monotonic()
    with aws_standin(workers=args.workers, memory_mb=args.memory_mb) as standin:
        with dask_wren.default_executor(**standin.settings_overrides, cleanup=True) as ex:
            t0 = time.monotonic()
            futures = ex.map(work, range(calls))
            assert [f.result() for f in futures] == [i * i for i in range(calls)]
            wall = time.monotonic() - t0
            summary = ex.cost()
            job_id = futures[0].job_id
            job = load_job(ex.storage, ex.settings.prefix, job_id, ex.signing_key)
            tally = ex._tallies[job_id]  # the host's own requests: in no record
            host = {"put": tally.host_put + tally.host_list, "get": tally.host_get}
            manifest_puts = (job.manifest or {}).get("host_requests", {}).get("put")
    headers = job.headers()
    hand = by_hand(headers, host)
    print(f"{calls:,} calls of {args.work_ms:g} ms through the AWS stand-in ({args.workers} workers, "
          f"{args.memory_mb} MB): {wall:.1f} s; {len(headers):,} records read back from storage, "
          f"{sum(1 for h in headers if h.get('status') == protocol.STATUS_OK):,} ok, "
          f"{sum(1 for h in headers if h['billing']['init_ms']):,} cold starts\n")
    print("Executor.cost():")
    print(summary)
    print("\nBy hand, from the records in storage and the published prices (us-east-1):")
    lines = [
        ("Lambda requests", f"{hand['invocations']:,} x $0.20 per million", hand["requests"]),
        ("Lambda duration", f"{hand['GB-s']:,.4f} GB-s x $0.0000166667", hand["compute"]),
        ("S3 PUT/COPY/POST/LIST", f"{hand['S3 PUT/LIST']:,} x $0.005 per 1,000 (host: {host['put']:,})", hand["S3 PUT $"]),
        ("S3 GET/SELECT", f"{hand['S3 GET']:,} x $0.0004 per 1,000 (host: {host['get']:,})", hand["S3 GET $"]),
        ("total", "", hand["total"]),
    ]
    width = max(len(what) for _, what, _ in lines)
    for name, what, dollars in lines:
        print(f"  {name:<22} {what:<{width}}  ${dollars:.8f}")
    print(f"  (the manifest's own count of the host's submit PUTs: {manifest_puts})")
    rows = [
        ("invocations", f"{summary.invocations:,}", f"{hand['invocations']:,}", "equal", summary.invocations == hand["invocations"]),
        ("GB-seconds", f"{summary.gb_seconds:,.4f}", f"{hand['GB-s']:,.4f}", "equal", abs(summary.gb_seconds - hand["GB-s"]) < 1e-6),
        ("total ($)", f"{summary.total:.8f}", f"{hand['total']:.8f}", "within $0.000001", abs(summary.total - hand["total"]) < 1e-6),
        ("total to the cent", f"{summary.total:.2f}", f"{hand['total']:.2f}", "equal", f"{summary.total:.2f}" == f"{hand['total']:.2f}"),
    ]
    print(f"\nSummary ({time.monotonic() - began:.1f} s in all{', quick run' if args.quick else ''})")
    head = ("measure", "Executor.cost()", "by hand", "target")
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(head, width, strict=True)) + "  ok")
    for name, a, b, target, ok in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip((name, a, b, target), width, strict=True)) + ("  yes" if ok else "  NO"))
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
