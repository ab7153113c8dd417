"""Progress: a line per stage and every few seconds when piped, nothing for quick commands."""

from __future__ import annotations

import io
import time
from pathlib import Path

from ndt_store.cli import main
from ndt_store.cli._common import heartbeat


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_output_gets_plain_lines_every_interval():
    out = io.StringIO()
    with heartbeat("verify", stream=out, interval=0.05, delay=0) as say:
        say("reading")
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "verify: reading"
    assert len(lines) >= 3 and all(line.startswith("verify: reading") for line in lines)
    assert "\r" not in out.getvalue()


def test_quick_commands_print_nothing():
    out = io.StringIO()
    with heartbeat("report", stream=out, interval=0.05, delay=5) as say:
        say("analysing")
    assert out.getvalue() == ""


def test_terminal_gets_one_rewritten_line():
    out = Tty()
    with heartbeat("synth", stream=out, delay=0) as say:
        say("writing")
    assert out.getvalue().startswith("\r") and "synth: writing" in out.getvalue()
    quiet = Tty()
    with heartbeat("synth", stream=quiet, delay=0, bar=True) as say:  # a bar draws instead
        say("writing")
    assert quiet.getvalue() == ""


def test_synth_piped_writes_no_carriage_returns(tmp_path: Path, capsys, monkeypatch):
    """synth used to write thousands of tqdm updates into logs."""
    monkeypatch.setattr("ndt_store.cli._common.HEARTBEAT_DELAY", 0.0)
    rc = main(
        [
            "synth",
            "--store",
            str(tmp_path / "s.zarr"),
            "--experiments",
            "2",
            "--steps",
            "3",
            "--records",
            "20",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0 and "\r" not in err and "synth: writing 2 experiments" in err
