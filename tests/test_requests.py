"""The storage protocol's cost: at most 4 requests per call, host and worker together."""

from dask_wren.config import Settings
from dask_wren.executor import Executor
from dask_wren.testing.counting import CountingStorage
from lambda_worker.storage.local import LocalStorage


def inc(x):
    return x + 1


def test_a_thousand_call_map_costs_at_most_four_requests_per_call(tmp_path):
    storage = CountingStorage(LocalStorage(str(tmp_path)))
    settings = Settings.from_config(workers=2, storage_dir=str(tmp_path))
    with Executor(settings, storage=storage) as ex:
        futures = ex.map(inc, range(1000))
        assert [f.result() for f in futures] == list(range(1, 1001))
        host = sum(storage.counts.values())
        worker = sum(f.stats["storage_requests"] for f in futures)
    per_call = (host + worker) / 1000
    detail = f"host {dict(storage.counts)}, worker {worker}"
    assert storage.counts["put"] == 4, detail  # the function, all arguments, the job's manifest, the host record: one object each
    assert storage.counts["get"] == 1000, detail  # one read per result
    assert worker <= 2 * 1000 + 2 * settings.workers, detail  # range read + result write (+ func per worker)
    assert per_call <= 4, f"{per_call:.2f} requests per call: {detail}"
