"""AWS's failure modes, injected by the offline stand-in into 500-call maps: results stay exact."""

import pytest

import dask_wren
from lambda_worker import protocol

pytestmark = pytest.mark.timeout(300)

# 100 calls in the default run; the full 500-call maps are marked slow (`pytest -m slow`).
SIZES = [100, pytest.param(500, marks=pytest.mark.slow)]


def triple(x):
    return 3 * x


def run_map(standin, n, **settings):
    with dask_wren.default_executor(**standin.settings_overrides, **settings) as ex:
        futures = ex.map(triple, range(n))
        results = dask_wren.get_all_results(futures, timeout=280)
        job = futures[0].job_id
        records = [k for p in (protocol.results_prefix, protocol.attempts_prefix) for k, _ in ex.storage.list(p(ex.settings.prefix, job))]
    return futures, results, records


def assert_exact(futures, results, records):
    n = len(futures)
    assert results == [3 * i for i in range(n)]
    assert all(f.succeeded() for f in futures)
    # every call has records (one per attempt: a second delivery never wrote a second one), and
    # each future took the record of one attempt
    assert {protocol.parse_result_key(k)[0] for k in records} == {f.call_id for f in futures}
    assert len(records) == len(set(records)) and all(f.key in records for f in futures)


# A 429 storm is met by many calls in flight, each throttled request retried on its own, as on
# Lambda with an account's concurrency.  The host caps calls in flight at the function's real
# concurrency, so through the session's 2-worker stand-in the storm would drain through 2 lanes,
# one botocore backoff (growing to 20 s) after another: this test gets a stand-in of 16 workers.
STORM_WORKERS = 16
# botocore gives up after 2 retries, so the host's own pause-and-resend path absorbs part of the
# storm too, and no single call sits in botocore's longest backoffs.
STORM_SETTINGS = {"invoke_max_attempts": 2, "backups": False}  # counts invokes exactly: no backups


@pytest.fixture(scope="module")
def storm_standin(standin):
    """A stand-in with STORM_WORKERS workers.  Started after the session's ``standin`` (hence the
    argument), so restoring the environment on exit leaves the session stand-in's in place."""
    from dask_wren.testing import aws_standin

    with aws_standin(workers=STORM_WORKERS) as s:
        yield s


@pytest.fixture
def storm_faults(storm_standin):
    storm_standin.ensure_bucket()
    storm_standin.faults.reset()
    yield storm_standin.faults
    storm_standin.faults.reset()


@pytest.mark.parametrize("n", SIZES)
def test_a_429_storm_is_absorbed(storm_standin, storm_faults, n):
    faults = storm_faults
    faults.set(throttle_first=n // 3, throttle_rate=0.2)
    assert_exact(*run_map(storm_standin, n, **STORM_SETTINGS))
    seen = faults.snapshot()
    assert seen.throttled >= n // 3
    assert seen.invokes == n + seen.throttled  # each throttled request was retried until accepted


@pytest.mark.parametrize("n", SIZES)
def test_duplicate_deliveries_count_once(standin, faults, n):
    faults.set(duplicate_rate=0.3)
    assert_exact(*run_map(standin, n))
    assert faults.snapshot().duplicated > n // 10


# A lost call is detected by its deadline, counted from the invoke: that is only meaningful when
# calls do not queue inside Lambda, i.e. max_concurrency is what the function can run at once
# (the stand-in runs 2).
LOSS_DETECTION = {"timeout": 2, "lost_call_grace": 1, "max_concurrency": 2, "poll_interval": 0.01}


@pytest.mark.parametrize("n", SIZES)
def test_dropped_events_are_invoked_again(standin, faults, n):
    faults.set(drop_rate=0.03)
    futures, results, records = run_map(standin, n, **LOSS_DETECTION)
    assert_exact(futures, results, records)
    seen = faults.snapshot()
    assert seen.dropped >= 1
    assert seen.invokes >= n + seen.dropped  # every dropped event was sent again


@pytest.mark.parametrize("n", SIZES)
def test_all_faults_at_once(standin, faults, n):
    faults.set(throttle_rate=0.1, duplicate_rate=0.1, drop_rate=0.02)
    assert_exact(*run_map(standin, n, **LOSS_DETECTION))


def test_a_call_dropped_every_time_fails_clearly(standin, faults):
    faults.set(drop_rate=1.0)
    with dask_wren.default_executor(**standin.settings_overrides, timeout=1, lost_call_grace=0.5, retries=1) as ex:
        f = ex.call_async(triple, 1)
        with pytest.raises(dask_wren.WrenTimeoutError, match="no result within the call's timeout") as caught:
            f.result(timeout=60)
        assert len(f.stats["attempts"]) == 2
        if hasattr(caught.value, "add_note"):
            assert "#1 (retry" in "\n".join(caught.value.__notes__)
    assert faults.snapshot().dropped == 2
