"""Executor API: map, call_async, reduce, map_reduce, chunks, limits, env, cleanup."""

import os

import numpy as np
import pytest

import dask_wren
from dask_wren.config import Settings


def square(x):
    return x * x


def total(xs):
    return sum(xs)


def read_env(name):
    return os.environ.get(name)


def chatty(n):
    for i in range(n):
        print(f"line {i}")
    return n


def test_map_returns_one_future_per_item_in_order(executor):
    futures = executor.map(square, range(20))
    assert [f.result() for f in futures] == [i * i for i in range(20)]
    assert all(f.succeeded() and not f.errored() for f in futures)


def test_map_numpy_items(executor):
    futures = executor.map(np.sum, [np.arange(5), np.ones(3)])
    assert [f.result() for f in futures] == [10, 3.0]


def test_call_async(executor):
    assert executor.call_async(square, 7).result() == 49


def test_map_of_nothing(executor):
    assert executor.map(square, []) == []


@pytest.mark.parametrize("chunksize", [1, 3, 10, 50])
def test_chunksize_groups_calls_per_invocation(executor, chunksize):
    futures = executor.map(square, range(10), chunksize=chunksize)
    assert dask_wren.get_all_results(futures) == [i * i for i in range(10)]
    request_ids = {f.stats["request_id"] for f in futures}
    assert len(request_ids) == -(-10 // chunksize)


def test_reduce_runs_remotely_on_results(executor):
    futures = executor.map(square, range(10))
    reduced = executor.reduce(total, futures)
    assert reduced.result() == sum(i * i for i in range(10))
    # the worker read the inputs from storage itself: one range read + one read per input
    assert reduced.stats["storage_requests"] >= 10


def test_reduce_propagates_an_input_error(executor):
    futures = executor.map(lambda x: 1 // x, [1, 0, 2])
    reduced = executor.reduce(total, futures)
    with pytest.raises(ZeroDivisionError):
        reduced.result()


def test_map_reduce(executor):
    assert executor.map_reduce(square, range(5), total).result() == 30


def test_reduce_of_no_futures(executor):
    assert executor.reduce(total, []).result() == 0


def test_map_item_limit_refuses_absurd_maps(tmp_path):
    with dask_wren.default_executor(storage_dir=str(tmp_path), map_item_limit=5) as ex:
        with pytest.raises(ValueError, match="map-item-limit"):
            ex.map(square, range(6))
        assert [f.result() for f in ex.map(square, range(5))] == [0, 1, 4, 9, 16]


def test_extra_env_applies_and_does_not_leak(tmp_path):
    # one worker, so the second call surely runs in the same process as the first
    with dask_wren.default_executor(storage_dir=str(tmp_path), workers=1) as ex:
        assert ex.call_async(read_env, "WREN_TEST_VAR", extra_env={"WREN_TEST_VAR": "set"}).result() == "set"
        assert ex.call_async(read_env, "WREN_TEST_VAR").result() is None
        home = ex.call_async(read_env, "HOME").result()
        assert ex.call_async(read_env, "HOME", extra_env={"HOME": "/elsewhere"}).result() == "/elsewhere"
        assert ex.call_async(read_env, "HOME").result() == home


def test_extra_env_must_be_strings(executor):
    with pytest.raises(TypeError, match="strings"):
        executor.map(read_env, ["X"], extra_env={"X": 1})


def test_stdout_tail_is_captured_and_bounded(tmp_path):
    with dask_wren.default_executor(storage_dir=str(tmp_path), output_tail=100) as ex:
        f = ex.call_async(chatty, 1000)
        assert f.result() == 1000
        assert f.stdout.endswith("line 999\n")
        assert len(f.stdout) <= 100
        assert f.header["output_dropped"]["stdout"] > 0


def test_context_manager_cleans_storage(tmp_path):
    store = tmp_path / "store"
    with dask_wren.default_executor(storage_dir=str(store)) as ex:
        assert ex.map(square, range(3))[2].result() == 4
        assert any(p.is_file() for p in store.rglob("*"))
    assert not any(p.is_file() for p in store.rglob("*"))


def test_cleanup_deletes_each_jobs_manifest_before_the_rest(tmp_path, monkeypatch):
    """A late worker that finds the payload gone finds the manifest gone too, and writes nothing."""
    from lambda_worker import protocol
    from lambda_worker.storage.local import LocalStorage

    deleted = []
    delete = LocalStorage.delete

    def recording(self, keys):
        deleted.extend(keys)
        return delete(self, keys)

    monkeypatch.setattr(LocalStorage, "delete", recording)
    with dask_wren.default_executor(storage_dir=str(tmp_path / "store")) as ex:
        futures = ex.map(square, range(3))
        dask_wren.wait(futures)
        job_id = futures[0].job_id
    manifest = protocol.manifest_key(ex.settings.prefix, job_id)
    job_objects = [k for k in deleted if k.startswith(protocol.job_prefix(ex.settings.prefix, job_id))]
    assert job_objects[0] == manifest and len(job_objects) > 1


def test_cleanup_can_be_turned_off(tmp_path):
    store = tmp_path / "store"
    with dask_wren.default_executor(storage_dir=str(store), cleanup=False) as ex:
        ex.call_async(square, 3).result()
    assert any(p.is_file() for p in store.rglob("*"))


def test_shut_down_executor_refuses_work(tmp_path):
    ex = dask_wren.default_executor(storage_dir=str(tmp_path))
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        ex.map(square, [1])


def test_settings_come_from_dask_config(tmp_path):
    import dask

    with dask.config.set({"wren.local.workers": 3, "wren.timeout": 12}):
        s = Settings.from_config()
    assert (s.workers, s.timeout) == (3, 12)
    assert Settings.from_config(timeout=5).timeout == 5
    with pytest.raises(TypeError, match="unknown dask-wren setting"):
        Settings.from_config(wokers=2)
    with pytest.raises(ValueError, match="backend"):
        Settings.from_config(backend="gcp")


def test_settings_from_environment_variables(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, DASK_WREN__LOCAL__WORKERS="5", DASK_WREN__TIMEOUT="7")
    code = "from dask_wren.config import Settings; s = Settings.from_config(); print(s.workers, s.timeout)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["5", "7"]


def test_lambda_executor_says_what_is_missing():
    with pytest.raises(ValueError, match="bucket"):
        dask_wren.lambda_executor()
    with pytest.raises(ValueError, match="needs S3 storage"):
        dask_wren.default_executor(backend="aws", storage="local")


def test_a_large_job_spreads_its_keys_over_shards(local_executor):
    """S3 limits requests per prefix: each block of CALLS_PER_SHARD calls has its own arguments
    object and results prefix, and the results still list in call order."""
    from lambda_worker import protocol

    n = 2 * protocol.CALLS_PER_SHARD + 500
    futures = local_executor.map(square, range(n))
    assert dask_wren.get_all_results(futures, timeout=120) == [x * x for x in range(n)]
    job = futures[0].job_id
    keys = [k for k, _ in local_executor.storage.list(protocol.job_prefix(local_executor.settings.prefix, job))]
    assert [k.rsplit("/", 2)[-2:] for k in keys if "/args/" in k] == [["args", f"{s:04d}.pkl"] for s in range(3)]
    results = [k for k in keys if "/r/" in k]
    assert [k.rsplit("/", 1)[-1] for k in results] == [protocol.call_id_for(i) for i in range(n)]
    assert {k.rsplit("/", 2)[-2] for k in results} == {"0000", "0001", "0002"}
    assert [f.key for f in futures] == results


def env_size(name):
    return len(os.environ[name])


def test_an_extra_env_too_large_for_an_event_travels_through_storage(executor):
    big = "x" * 300_000  # more than an asynchronous Lambda event may carry
    futures = executor.map(env_size, ["WREN_BIG", "WREN_BIG"], extra_env={"WREN_BIG": big})
    assert [f.result(timeout=60) for f in futures] == [300_000, 300_000]
    assert "WREN_BIG" not in os.environ
