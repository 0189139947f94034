"""Progress bars (``dask_wren.progress``): when a wait shows one, what it counts, that it closes
however the wait ends, that ``wren_get`` draws none of its own, and that the off path imports no
tqdm and adds no callback.

Calls that must stay unfinished wait on a gate (``conftest.gate``); the bar's counts are read from
the ``Bar`` object with ``wait_until``, never by timing.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import subprocess
import sys
import textwrap
import threading
import types

import dask
import dask.bag as db
import pytest
from conftest import gate, wait_until

import dask_wren
from dask_wren import futures as futures_module
from dask_wren import progress
from dask_wren.config import Settings
from dask_wren.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def no_bar_left() -> bool:
    from tqdm.std import tqdm

    threads = [t for t in threading.enumerate() if t.name == "dask-wren-progress"]
    return not threads and not list(tqdm._instances)


# -- when a bar shows ---------------------------------------------------------------------------


def test_auto_shows_a_bar_only_to_someone_watching(monkeypatch):
    auto, forced, never = (types.SimpleNamespace(_progress=p) for p in ("auto", True, False))
    assert progress.delay_for([auto], None) is None  # pytest captures stderr: nobody watches
    monkeypatch.setattr(progress, "interactive", lambda: True)
    assert progress.delay_for([auto], None) == progress.AUTO_DELAY
    assert progress.delay_for([never], None) is None
    assert progress.delay_for([never, forced], None) == 0.0  # any job asking for a bar gets one
    assert progress.delay_for([cf.Future()], None) is None  # not a dask-wren future: no preference
    assert progress.delay_for([auto], False) is None  # the wait's own progress= decides
    assert progress.delay_for([never], True) == 0.0


def test_interactive_means_a_terminal_or_a_jupyter_kernel(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.interactive()
    tty = io.StringIO()
    tty.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", tty)
    assert progress.interactive()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    kernel = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert progress.interactive()
    terminal_shell = types.SimpleNamespace()  # IPython in a terminal: its stderr is the terminal
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: terminal_shell))
    assert not progress.interactive()


def test_the_setting_and_map_set_each_jobs_preference(tmp_path):
    with pytest.raises(ConfigError, match="wren.progress"):
        Settings.from_config(progress="sometimes")
    with dask_wren.default_executor(storage_dir=str(tmp_path), workers=2, progress=False) as ex:
        quiet = ex.map(abs, [-1])
        loud = ex.map(abs, [-1], progress=True)
        reduced = ex.reduce(sum, loud)
        assert [f._progress for f in quiet + loud + [reduced]] == [False, True, False]
        ex.get_result(quiet + loud + [reduced], progress=False)
    with dask.config.set({"wren.progress": True}), dask_wren.default_executor(storage_dir=str(tmp_path), workers=2) as ex:
        assert ex.map(abs, [-1])[0]._progress is True


# -- what a bar shows ---------------------------------------------------------------------------


def test_a_bar_counts_calls_done_and_failed_and_closes(local_executor, capsys):
    fs = local_executor.map(fail_on_three, range(6), progress=True)
    done, not_done = local_executor.wait(fs)
    assert len(done) == 6 and not not_done
    err = capsys.readouterr().err
    assert f"dask-wren {fs[0].job_id}" in err
    assert "6/6" in err and "failed=1" in err and "running=0" in err
    assert no_bar_left()
    more = local_executor.map(abs, [-7], progress=True)
    local_executor.wait(fs + more)  # calls finished before the wait count too
    err = capsys.readouterr().err
    assert "7/7" in err and "failed=1" in err


def test_a_bar_counts_the_calls_a_worker_runs(local_executor, tmp_path, capsys):
    path = str(tmp_path / "open")
    fs = local_executor.map(gate, [path] * 3)  # two workers: two calls run, one waits for a worker
    with progress.Bar(fs) as bar:
        wait_until(lambda: bar.running == 2, what="two calls running")
        assert bar.done == 0
        open(path, "w").close()
        futures_module.wait(fs, progress=False)
        wait_until(lambda: bar.done == 3, what="three calls counted done")
    assert bar.running == 0 and bar.failed == 0
    assert "3/3" in capsys.readouterr().err
    assert no_bar_left()


def test_module_level_waits_show_one_bar_over_futures_of_several_executors(local_executor, tmp_path, capsys):
    with dask_wren.default_executor(storage_dir=str(tmp_path / "other"), workers=2) as other:
        fs = local_executor.map(abs, [-1, -2]) + other.map(abs, [-3])
        assert dask_wren.get_all_results(fs, progress=True) == [1, 2, 3]
        err = capsys.readouterr().err
        assert "dask-wren: 100%" in err and "3/3" in err  # one bar, named for no single job
        assert [f.result() for f in dask_wren.as_completed(fs, progress=True)]
        assert capsys.readouterr().err == ""  # all done before the wait began: no bar at all
    assert no_bar_left()


def test_auto_draws_nothing_for_a_wait_shorter_than_its_delay(local_executor, monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr(progress, "AUTO_DELAY", 600.0)
    assert local_executor.get_result(local_executor.map(abs, [-1, -2])) == [1, 2]
    assert capsys.readouterr().err == ""
    assert no_bar_left()


# -- a bar always closes ------------------------------------------------------------------------


def test_the_bar_closes_on_a_timeout_an_exception_an_interrupt_and_a_loop_left_early(local_executor, tmp_path, monkeypatch):
    path = str(tmp_path / "open")
    stuck = local_executor.map(gate, [path])
    with pytest.raises(cf.TimeoutError):
        local_executor.get_result(stuck, timeout=0.05, progress=True)
    assert no_bar_left()
    done, not_done = local_executor.wait(stuck, timeout=0.05, progress=True)
    assert not_done == stuck and no_bar_left()

    quick = local_executor.map(abs, [-1])
    loop = local_executor.as_completed(quick + stuck, progress=True)
    assert next(loop) is quick[0]
    loop.close()  # the caller leaves the loop: the generator closes, and the bar with it
    assert no_bar_left()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(futures_module, "_wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        local_executor.wait(stuck, progress=True)
    assert no_bar_left()
    open(path, "w").close()


# -- what stays as it was -----------------------------------------------------------------------


def test_wren_get_draws_no_bar_of_its_own_and_dask_progressbar_works(tmp_path, capsys):
    from dask.diagnostics import ProgressBar

    out = io.StringIO()
    with dask.config.set({"wren.progress": True}), ProgressBar(out=out):
        bag = db.from_sequence(range(20), npartitions=4).map(abs).sum()
        assert bag.compute(scheduler=dask_wren.wren_get, storage_dir=str(tmp_path), workers=2) == sum(range(20))
    assert "100%" in out.getvalue()
    assert "dask-wren" not in capsys.readouterr().err
    assert no_bar_left()


def test_with_progress_off_no_tqdm_is_imported_and_no_callback_added(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        import dask_wren

        with dask_wren.default_executor(storage_dir={str(tmp_path)!r}, workers=1) as ex:
            fs = ex.map(abs, [-1, -2])
            assert ex.get_result(fs) == [1, 2]
            assert sorted(f.result() for f in ex.as_completed(fs)) == [1, 2]
            ex.wait(fs)
            dask_wren.get_all_results(fs)
            assert not any(f._done_callbacks for f in fs), "a callback was added"
        assert "tqdm" not in sys.modules, "tqdm was imported"
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok" and proc.stderr == ""


def test_on_aws_the_bar_shows_what_the_finished_calls_cost(standin, capsys):
    from dask_wren.cost import Prices, call_cost, money

    with dask_wren.default_executor(**standin.ensure_bucket().settings_overrides) as ex:
        fs = ex.map(abs, [-1, -2, -3], progress=True)
        assert ex.get_result(fs) == [1, 2, 3]
        spent = sum(call_cost(f.header, Prices.load(ex.settings)) for f in fs)
    assert spent > 0
    assert f"cost={money(spent)}" in capsys.readouterr().err
