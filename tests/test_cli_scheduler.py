"""``--workers N`` runs an analysis command on a local dask cluster, same output."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")


def test_periods_on_local_cluster_equal_threaded(real_store, capsys):
    from ndt_store.cli import main

    assert main(["periods", "--store", real_store.location, "--format", "csv"]) == 0
    threaded = capsys.readouterr().out
    assert main(["periods", "--store", real_store.location, "--format", "csv",
                 "--workers", "1"]) == 0  # fmt: skip
    clustered = capsys.readouterr().out
    assert clustered == threaded
    assert threaded.count("\n") == 4  # header + three experiments
