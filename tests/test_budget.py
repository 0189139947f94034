"""``wren.budget``: the executor stops sending invocations once spent plus in flight would pass it.

Prices are overridden so that every invocation costs exactly $1 (its request) and nothing else:
then which calls run is decided by the budget alone, whatever the timing."""

import os

import dask
import pytest

import dask_wren
from dask_wren import BudgetExceededError
from dask_wren.backends.base import Invocation, InvocationQueue
from tests.conftest import gate, wait_until

pytestmark = pytest.mark.timeout(120)

ONE_DOLLAR_AN_INVOCATION = {
    "us-east-1": {
        "lambda": {arch: {"gb-second": 0, "request-per-million": 1_000_000} for arch in ("x86_64", "arm64")},
        "s3": {"put-per-1000": 0, "get-per-1000": 0},
    }
}


def outcomes(futures):
    dask_wren.wait(futures)
    return ["ok" if f.exception() is None else type(f.exception()).__name__ for f in futures]


@pytest.mark.parametrize(
    ("backend", "workers", "chunksize", "sent"),
    [("local", 1, 1, 5), ("local", 3, 1, 5), ("local", 1, 2, 10), ("aws", None, 1, 5)],
)
def test_the_budget_stops_at_the_right_call(request, tmp_path, backend, workers, chunksize, sent):
    """$5.50 buys five $1 invocations: the calls of the first five run, every later one fails.  On
    AWS (the stand-in) the backend sends them all at once, through the same gate."""
    if backend == "local":
        settings = {"storage_dir": str(tmp_path / "store"), "workers": workers}
    else:
        settings = request.getfixturevalue("standin").ensure_bucket().settings_overrides
    with dask.config.set({"wren.prices": ONE_DOLLAR_AN_INVOCATION, "wren.budget": 5.5}):
        ex = dask_wren.default_executor(**settings)
    with ex:
        futures = ex.map(abs, range(-14, 0), chunksize=chunksize)
        assert outcomes(futures) == ["ok"] * sent + ["BudgetExceededError"] * (14 - sent)
        message = str(futures[-1].exception())
        assert "budget of $5.50 (wren.budget)" in message and f"{14 - sent} calls were not sent" in message
        assert "$5.00 spent, with nothing left in flight" in message
        assert "next invocation estimated at $1.00 (the mean of the finished calls)" in message
        assert ex.cost().total == pytest.approx(5.0)
        # once exceeded, nothing more is sent: a later map fails at once, whatever it would cost
        later = ex.map(abs, [1, 2])
        assert outcomes(later) == ["BudgetExceededError"] * 2
        assert "2 calls were not sent" in str(later[0].exception())
        assert ex.cost().invocations == 5


def test_calls_in_flight_finish_and_decide(tmp_path):
    """Two calls run (held at a gate) when the next would pass the budget: it is held back, not
    failed, while they run (they may cost less than counted); once they finish, the rest fail."""
    opened = tmp_path / "open"
    with dask.config.set({"wren.prices": ONE_DOLLAR_AN_INVOCATION}):
        # a pool of its own (its memory setting): no earlier long calls keep it from sending calls ahead
        ex = dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=3, memory_mb=1999, budget=2.5)
    with ex:
        futures = ex.map(gate, [str(opened)] * 6, backups=False)
        wait_until(lambda: ex._budget.in_flight == pytest.approx(2.0), what="two calls to be sent")
        assert not ex._budget.exceeded and not any(f.done() for f in futures)  # the third is held back, not failed
        opened.touch()
        assert outcomes(futures) == ["ok", "ok"] + ["BudgetExceededError"] * 4
        assert "$2.00 spent, with nothing left in flight" in str(futures[2].exception())
        assert ex.cost().invocations == 2


PER_GB_SECOND = {  # $1 per GB-second, nothing else: a call's cost is its duration x memory
    "us-east-1": {
        "lambda": {arch: {"gb-second": 1.0, "request-per-million": 0} for arch in ("x86_64", "arm64")},
        "s3": {"put-per-1000": 0, "get-per-1000": 0},
    }
}


def test_the_first_wave_is_bounded_by_what_lambda_could_bill(tmp_path):
    """Before any call has finished, a call counts at the most Lambda can bill it (timeout x
    memory): a $25 budget sends two 10 s calls at 1 GB ($10 each at worst), not three,
    however many workers are free; once one has finished (and cost far less), the rest go."""
    opened = tmp_path / "open"
    with dask.config.set({"wren.prices": PER_GB_SECOND}):
        ex = dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=3, memory_mb=1024, budget=25)
    with ex:
        futures = ex.map(gate, [str(opened)] * 6, timeout=10, backups=False)
        wait_until(lambda: ex._budget.in_flight == pytest.approx(20.0), what="two calls to be sent")
        assert not ex._budget.exceeded and not any(f.done() for f in futures)  # the third is held back
        opened.touch()
        assert outcomes(futures) == ["ok"] * 6
        assert ex.cost().total < 25


def test_a_budget_holding_back_does_not_stall_another_executor_on_the_same_pool(tmp_path):
    """Executors with the same settings share one pool: while one's budget holds its third call
    back, another executor's calls still run on the free worker."""
    opened = tmp_path / "open"
    settings = {"storage_dir": str(tmp_path / "store"), "workers": 3, "memory_mb": 1997}
    with dask.config.set({"wren.prices": ONE_DOLLAR_AN_INVOCATION}):
        capped = dask_wren.default_executor(budget=2.5, **settings)
    other = dask_wren.default_executor(**settings)
    with capped, other:
        assert capped.backend is other.backend
        held = capped.map(gate, [str(opened)] * 4, backups=False)
        wait_until(lambda: capped._budget.in_flight == pytest.approx(2.0), what="two calls to be sent")
        assert other.get_result(other.map(abs, range(-3, 0)), timeout=60) == [3, 2, 1]
        assert not any(f.done() for f in held)  # still held back behind the gated two, not failed
        opened.touch()
        assert outcomes(held) == ["ok", "ok", "BudgetExceededError", "BudgetExceededError"]


def test_a_budget_smaller_than_one_call_at_worst_says_so(tmp_path):
    with dask.config.set({"wren.prices": PER_GB_SECOND}):
        ex = dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=1, memory_mb=1024, budget=5)
    with ex:
        (future,) = ex.map(abs, [-1], timeout=10)
        with pytest.raises(BudgetExceededError, match="no call had finished: the most Lambda can bill it") as info:
            future.result()
        assert "estimated at $10.00" in str(info.value) and "a shorter timeout= lowers it" in str(info.value)


def die_first(marker):
    """Run remotely: the first run dies (its worker exits), a later run returns."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "again"


def test_retries_count_against_the_budget(tmp_path):
    """A dead worker's attempt counts at its estimate ($1): its retry would pass $1.50, so it is not sent."""
    with dask.config.set({"wren.prices": ONE_DOLLAR_AN_INVOCATION}):
        ex = dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=1, budget=1.5, retry_backoff=0)
    with ex:
        (future,) = ex.map(die_first, [str(tmp_path / "died")])
        with pytest.raises(BudgetExceededError, match="1 calls were not sent"):
            future.result()
        assert [a["outcome"].split(":")[0] for a in future.stats["attempts"]] == ["worker_died", "not sent"]
    with dask.config.set({"wren.prices": ONE_DOLLAR_AN_INVOCATION}):
        ex = dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=1, budget=2.5, retry_backoff=0)
    with ex:
        (future,) = ex.map(die_first, [str(tmp_path / "died-too")])
        assert future.result() == "again"


def test_no_budget_sets_no_hook(tmp_path):
    with dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=1) as ex:
        assert ex._budget is None
        assert outcomes(ex.map(abs, range(3))) == ["ok"] * 3


def test_the_budget_applies_per_wren_get_compute(tmp_path):
    """``dask.config.set({"wren.budget": ...})`` around a compute: each compute has its own executor,
    so its own budget."""
    tasks = [dask.delayed(abs)(-i) for i in range(4)]
    config = {
        "wren.prices": ONE_DOLLAR_AN_INVOCATION, "wren.budget": 4.5,
        "wren.storage.local-dir": str(tmp_path / "store"), "wren.local.workers": 2,
    }
    with dask.config.set(config):
        assert dask.compute(*tasks, scheduler="wren") == (0, 1, 2, 3)
        assert dask.compute(*tasks, scheduler="wren") == (0, 1, 2, 3)  # a new compute, a new budget
        with pytest.raises(BudgetExceededError, match="budget of \\$4.50"):
            dask.compute(*[dask.delayed(abs)(-i) for i in range(8)], scheduler="wren")


class Gate:
    """A budget stand-in: answers each invocation from ``verdicts`` (request id -> True/None/False)."""

    def __init__(self, **verdicts):
        self.verdicts = verdicts
        self.asked = []

    def admit(self, inv):
        self.asked.append(inv.request_id)
        verdict = self.verdicts.get(inv.request_id, True)
        if verdict:
            inv.admit = None
        return verdict


def invocation(request_id, budget=None):
    return Invocation(request_id, {"calls": [{"id": request_id}]}, [request_id], 10.0, admit=None if budget is None else budget.admit)


def test_the_queue_holds_back_one_budgets_line_and_lets_the_others_pass():
    a, b = Gate(a1=None), Gate(b2=False)
    queue = InvocationQueue()
    for inv in (invocation("a1", a), invocation("x1"), invocation("a2", a), invocation("b1", b), invocation("b2", b), invocation("b3", b)):
        queue.append(inv)
    taken = []
    while True:
        inv, held = queue.take()
        if inv is None:
            break
        taken.append(inv.request_id)
    # a1 is held and a2 waits behind it unasked; b2 is refused and dropped; the rest go in order
    assert taken == ["x1", "b1", "b3"] and held and len(queue) == 2
    assert a.asked.count("a2") == 0 and b.asked == ["b1", "b2", "b3"]
    queue.appendleft(invocation("a0", a))  # a retry of a's goes first in a's line
    queue.append(invocation("x2"))
    assert queue.take()[0].request_id == "a0"  # a0 is let go (asked first); a1 still holds its line
    assert queue.take()[0].request_id == "x2" and len(queue) == 2
    assert queue.cancel("a2", "a2") and len(queue) == 1  # every call of it cancelled: gone
    a.verdicts["a1"] = True
    inv, held = queue.take()
    assert inv.request_id == "a1" and not held and queue.take() == (None, False) and len(queue) == 0
