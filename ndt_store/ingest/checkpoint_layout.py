"""Find the checkpoints in a folder tree as researchers have them, and their training steps.

Layouts understood (recursively, in any mix):

* **Trainer folders** ``checkpoint-N/`` (``transformers.Trainer``) holding
  ``model.safetensors`` or ``pytorch_model.bin``, sharded weights with a
  ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``,
  ``trainer_state.json`` and ``config.json``; the Trainer's other files
  (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth``, ``scaler.pt``,
  ``training_args.bin``) are not model weights and are never opened.
* **Step folders** ``step_N/``, ``stepN/``, ``global_stepN/``, ``iter_N/`` (Pythia-style
  suites), with the same contents.
* **Model folders** without a step in their name (a ``save_pretrained`` output, a
  folder with ``config.json``): the step comes from a ``trainer_state.json`` inside;
  a folder without one is skipped when other checkpoints give steps (the final
  model the Trainer saves beside its ``checkpoint-N/`` folders), refused otherwise.
* **Checkpoint files** ``*.pt``, ``*.pth``, ``*.safetensors`` in any other folder, one
  step each, from a ``step`` entry inside or the file name (``checkpoint_step_00100.pt``,
  ``step_20.pth``, ``model-2000.safetensors``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ndt_store.errors import InputError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "TRAINER_FILES",
    "Candidate",
    "find_candidates",
    "folder_step",
    "step_from_name",
]

CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".safetensors")
"""Suffixes of loose checkpoint files."""
INDEX_FILES: tuple[str, ...] = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TRAINER_FILES = frozenset(
    {"optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "rng_state.pth"}
)
"""Files of a Trainer checkpoint folder that are not model weights (never opened)."""
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.json"

_STEP_RE = re.compile(r"(?:step|iter|iteration|ckpt|checkpoint)[_\-.]?0*(\d+)", re.IGNORECASE)
_DIGITS_RE = re.compile(r"(\d+)(?!.*\d)")
_FOLDER_RE = re.compile(
    r"^(?:checkpoint|global_step|step|iter|iteration|ckpt)[_\-]?0*(\d+)$", re.IGNORECASE
)
_MAX_STEP = 2**63 - 1


def step_from_name(path: str | os.PathLike[str]) -> int | None:
    """Training step encoded in a checkpoint file name, or ``None``.

    Examples
    --------
    >>> step_from_name("checkpoint_step_00100.pt"), step_from_name("model-2000.safetensors")
    (100, 2000)
    >>> step_from_name("final.pt") is None
    True
    """
    stem = Path(path).name.split(".")[0]
    match = _STEP_RE.search(stem) or _DIGITS_RE.search(stem)
    return int(match.group(1)) if match else None


def folder_step(path: str | os.PathLike[str]) -> int | None:
    """Step of a checkpoint folder name (``checkpoint-500``, ``step_1000``, ``step143000``).

    Examples
    --------
    >>> folder_step("out/checkpoint-500"), folder_step("step143000"), folder_step("run3")
    (500, 143000, None)
    """
    match = _FOLDER_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def check_step(step: object, source: object) -> int:
    """``step`` as an int in the store's int64 range, or an :class:`InputError`."""
    if isinstance(step, bool) or not isinstance(step, int | float | str):
        raise InputError("the training step is not an integer", source=source, value=step)
    try:
        value = int(step) if not isinstance(step, float) or step.is_integer() else None
    except ValueError:
        value = None
    if value is None:
        raise InputError(
            "the training step is not an integer", source=source, field="step", value=step
        )
    if not 0 <= value <= _MAX_STEP:
        raise InputError(
            "the training step is outside 0 .. 2**63-1", source=source, field="step", value=value
        )
    return value


@dataclass
class Candidate:
    """One checkpoint: the weight files of one training step.

    ``step`` is ``None`` until it is read from a file's ``step`` entry; ``named``
    says whether it came from a folder or file name.
    """

    source: Path
    files: list[Path]
    step: int | None = None
    named: bool = False
    folder: bool = False
    trainer_state: Path | None = None
    config: Path | None = None
    index: Path | None = None
    skipped: list[Path] = field(default_factory=list)


def _weight_files(folder: Path, names: list[str]) -> tuple[list[Path], Path | None]:
    """The model weight files of a checkpoint folder (shards from the index if present)."""
    for index_name in INDEX_FILES:
        if index_name in names:
            index = folder / index_name
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted({str(v) for v in weight_map.values()})
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InputError(
                    "not a sharded-checkpoint index (no weight_map)", source=index
                ) from None
            for shard in shards:
                if Path(shard).name != shard or not (folder / shard).is_file():
                    raise InputError(f"shard {shard!r} is missing", source=index)
            return [folder / s for s in shards], index
    files = [
        folder / n
        for n in names
        if n not in TRAINER_FILES
        and not n.startswith("rng_state")
        and (
            n.endswith(CHECKPOINT_SUFFIXES)
            or (n.startswith("pytorch_model") and n.endswith(".bin"))
        )
    ]
    return sorted(files), None


def _is_model_folder(folder: Path, names: list[str]) -> bool:
    return (
        folder_step(folder) is not None
        or CONFIG in names
        or TRAINER_STATE in names
        or any(n in names for n in INDEX_FILES)
    )


def _walk(folder: Path, out: list[Candidate]) -> None:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    names = [e.name for e in entries if e.is_file(follow_symlinks=True)]
    if _is_model_folder(folder, names):
        files, index = _weight_files(folder, names)
        if files:
            step = folder_step(folder)
            out.append(
                Candidate(
                    source=folder,
                    files=files,
                    step=step,
                    named=step is not None,
                    folder=True,
                    trainer_state=folder / TRAINER_STATE if TRAINER_STATE in names else None,
                    config=folder / CONFIG if CONFIG in names else None,
                    index=index,
                )
            )
    else:
        for name in names:
            if name.endswith(CHECKPOINT_SUFFIXES):
                path = folder / name
                step = step_from_name(path)
                out.append(Candidate(source=path, files=[path], step=step, named=step is not None))
    for entry in entries:  # symlinked folders are not followed (no cycles, no escapes)
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            _walk(Path(entry.path), out)


def find_candidates(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[Candidate]:
    """Checkpoints of a file, a folder tree or a list of files, in discovery order.

    Raises
    ------
    InputError
        Nothing to import, or a path does not exist.
    """
    if not isinstance(source, str | os.PathLike):
        out = []
        for p in source:
            path = Path(p)
            if not path.exists():
                raise InputError("no such file or directory", source=path)
            out += find_candidates(path)
        return out
    src = Path(source)
    if src.is_dir():
        found: list[Candidate] = []
        _walk(src, found)
        if not found:
            raise InputError(
                "no checkpoints found (no .pt/.pth/.safetensors files, checkpoint-N/ or "
                "step_N/ folders)",
                source=src,
            )
        return found
    if not src.is_file():
        raise InputError("no such file or directory", source=src)
    step = step_from_name(src)
    return [Candidate(source=src, files=[src], step=step, named=step is not None)]
