"""``synth_store`` writes several experiments at once and stores the same content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ndt_store
from ndt_store.errors import InputError
from ndt_store.synth import synth_store


def test_threads_write_the_same_store(tmp_path: Path) -> None:
    sizes = dict(experiments=4, steps=3, layers=2, records=30, kinds=("phase1", "attention"))
    one = synth_store(tmp_path / "one.zarr", workers=1, **sizes)
    many = synth_store(tmp_path / "many.zarr", workers=3, **sizes)
    assert one.experiments() == many.experiments()
    assert len(many.experiments()) == 4
    for name in one.experiments():
        np.testing.assert_array_equal(
            one.phase1(name).stable_rank.values, many.phase1(name).stable_rank.values
        )
        np.testing.assert_array_equal(
            one.attention(name, "layers.1").values, many.attention(name, "layers.1").values
        )
        assert one.snapshot_steps(name) == many.snapshot_steps(name)
    report = ndt_store.verify_store(ndt_store.open_store(tmp_path / "many.zarr", mode="r"))
    assert report.ok and report.problems == []
    with pytest.raises(InputError, match="workers"):
        synth_store(tmp_path / "bad.zarr", workers=0, **sizes)
