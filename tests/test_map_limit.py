"""The map-item limit: what it counts, and an error whose remedies work."""

from __future__ import annotations

import dask
import pytest

import dask_wren
from dask_wren.futures import get_all_results

pytestmark = pytest.mark.timeout(60)


def test_map_limit_error_names_the_setting_and_remedies_that_work(tmp_path):
    with dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=1, map_item_limit=5) as ex:
        for chunksize in (1, 10):  # the limit counts items, so chunksize changes nothing
            with pytest.raises(ValueError) as info:
                ex.map(abs, range(10), chunksize=chunksize)
        message = str(info.value)
        assert "10 items" in message and "wren.map-item-limit (5)" in message
        assert "chunksize=" not in message  # that remedy would be refused the same way
        assert "several map() calls" in message and "fewer, larger items" in message
        # the remedies it gives: several maps, fewer larger items ...
        assert get_all_results(ex.map(abs, range(5)) + ex.map(abs, range(5, 10))) == list(range(10))
        assert get_all_results(ex.map(sum, [list(range(5)), list(range(5, 10))])) == [10, 35]
    # ... or a higher limit, set as the message says
    assert "dask.config.set({'wren.map-item-limit': 10})" in message
    with dask.config.set({"wren.map-item-limit": 10}):
        with dask_wren.default_executor(storage_dir=str(tmp_path / "store"), workers=1) as ex:
            assert get_all_results(ex.map(abs, range(-10, 0), chunksize=5)) == list(range(10, 0, -1))
