"""Ingest model checkpoints (PyTorch ``.pt``, safetensors, in-memory state_dicts) as weights.

Each checkpoint becomes one committed weight snapshot of an experiment at its
training step (:meth:`ndt_store.store.Store.write_snapshot`). Checkpoints may
arrive in any order; the store keeps snapshots sorted by step.

Safety: a ``.pt`` file is a pickle. It is opened only with
``torch.load(path, map_location="cpu", weights_only=True)`` (passed explicitly,
so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off), with numpy scalar
types allowed for older checkpoints. A file whose pickle names any other global
is refused with :class:`~ndt_store.errors.UnsafeCheckpointError` before it is
unpickled; nothing in it runs. There is no unsafe fallback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ndt_store._dims import WEIGHTS
from ndt_store._names import validate_name
from ndt_store.errors import (
    ExperimentExistsError,
    InputError,
    NdtStoreError,
    UnsafeCheckpointError,
    require,
)
from ndt_store.store import Store

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "check_checkpoint_safe",
    "find_checkpoints",
    "ingest_checkpoints",
    "ingest_state_dict",
    "load_checkpoint",
    "step_from_name",
]

PathLike = str | os.PathLike[str]
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".safetensors")
"""File suffixes recognised in a directory."""
STATE_KEYS: tuple[str, ...] = ("model_state_dict", "state_dict", "model")
"""Keys under which a checkpoint dict may hold the model's state_dict."""
_RESERVED_INFO = {"step", "row", "kinds", "model_state_dict", "state_dict", "model"}
_STEP_RE = re.compile(r"(?:step|iter|iteration|ckpt|checkpoint)[_\-.]?0*(\d+)", re.IGNORECASE)
_DIGITS_RE = re.compile(r"(\d+)(?!.*\d)")


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


def _safe_globals() -> list[Any]:
    """numpy scalar and dtype types that older checkpoints pickle (e.g. a numpy ``loss``)."""
    from numpy import dtypes

    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [core.multiarray.scalar, np.dtype]
    allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _allowed_names(allowed: Sequence[Any]) -> set[str]:
    names = set()
    for obj in allowed:
        module = getattr(obj, "__module__", "")
        names.add(f"{module}.{obj.__qualname__}")
        names.add(f"{module}.{obj.__name__}")
    return names


def check_checkpoint_safe(path: str | os.PathLike[str]) -> None:
    """Refuse a ``.pt`` pickle naming globals beyond tensors and numpy scalars (nothing is run).

    Uses ``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads
    the pickle's opcodes without executing them. Files in the old non-zip
    format cannot be scanned; for them the ``weights_only`` unpickler of
    ``torch.load`` is the guard (it refuses any other global before calling it).

    Raises
    ------
    UnsafeCheckpointError
        Naming the file and the offending globals.
    """
    require("torch", "torch")
    from torch.serialization import get_unsafe_globals_in_checkpoint

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", source=path)
    try:
        offending = get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # an old non-zip checkpoint: torch.load's restricted unpickler guards it
        return
    allowed = _allowed_names(_safe_globals())
    unsafe = [g for g in offending if g not in allowed and not g.startswith("numpy.")]
    if unsafe:
        raise UnsafeCheckpointError(
            f"{path}: refused; loading it would need arbitrary code ({', '.join(unsafe)}); "
            "nothing in it was run"
        )


def _load_pt(path: Path) -> Any:
    torch = require("torch", "torch")
    from torch.serialization import safe_globals

    check_checkpoint_safe(path)
    try:
        with safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise UnsafeCheckpointError(
                f"{path}: refused; it is not loadable with weights_only=True "
                f"({exc.__class__.__name__})"
            ) from None
        raise InputError(f"cannot load checkpoint ({exc})", source=path) from None


def _load_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    require("safetensors", "safetensors")
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="np") as f:
            meta = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as exc:
        raise InputError(f"cannot read safetensors file ({exc})", source=path) from None
    info: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            info[key] = int(value) if key == "step" else float(value)
        except ValueError:
            info[key] = value
    return tensors, info


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _to_numpy(value: Any) -> np.ndarray:
    if _is_tensor(value):
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return np.asarray(t.numpy())
    return np.asarray(value)


def _split_checkpoint(obj: Any, source: object) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(state_dict, scalar info, optimizer state) of a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise InputError(
            f"expected a state_dict or a dict holding one, got {type(obj).__name__}",
            source=source,
        )
    key = next((k for k in STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
    if key is None:
        state = {k: v for k, v in obj.items() if _is_tensor(v) or isinstance(v, np.ndarray)}
        return state, {}, None
    info = {}
    for k, v in obj.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool | int | float | str) and k != key:
            info[str(k)] = v
    return dict(obj[key]), info, obj.get("optimizer_state_dict", obj.get("optimizer"))


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read one checkpoint file safely: ``({parameter: array}, {scalar info})``.

    ``.pt``/``.pth`` files go through ``torch.load(..., weights_only=True)`` only;
    ``.safetensors`` files through safetensors (metadata become info).

    Raises
    ------
    UnsafeCheckpointError
        The pickle needs globals other than tensors and numpy scalars.
    InputError
        The file cannot be read or holds no state_dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    state, info, _ = _split_checkpoint(_load_pt(path), path)
    return {
        str(k): _to_numpy(v) for k, v in state.items() if _is_tensor(v) or isinstance(v, np.ndarray)
    }, info


def find_checkpoints(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[Path]:
    """Checkpoint files of a file, a directory (its checkpoint files, sorted) or a list of files."""
    if isinstance(source, str | os.PathLike):
        src = Path(source)
        if src.is_dir():
            files = sorted(p for p in src.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
            if not files:
                raise InputError(f"no {'/'.join(CHECKPOINT_SUFFIXES)} files", source=src)
            return files
        if not src.is_file():
            raise InputError("no such file or directory", source=src)
        return [src]
    return [Path(p) for p in source]


def ingest_state_dict(
    store: Store,
    experiment: str,
    step: int,
    state_dict: Mapping[str, Any],
    *,
    info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Literal["created", "unchanged", "replaced"]:
    """Store an in-memory state_dict (torch tensors or arrays) as the weights at ``step``.

    Creates the experiment (empty Phase 1 series) if it is absent.

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> store = ndt_store.open_store(tempfile.mkdtemp() + "/s.zarr")
    >>> ingest_state_dict(store, "run", 10, {"fc.weight": np.ones((2, 3))})
    'created'
    >>> store.weights("run")["fc.weight"].dims
    ('step', 'out', 'in')
    """
    weights = {str(k): _to_numpy(v) for k, v in state_dict.items()}
    if not weights:
        raise InputError(f"experiment {experiment!r} step {step}: the state_dict is empty")
    validate_name(experiment)
    for name in weights:  # refuse before anything (even the experiment) is created
        validate_name(name, kind="parameter")
    if experiment not in store:
        store.create_run(experiment, {}, [])
    if not overwrite and int(step) in store.snapshot_steps(experiment, WEIGHTS):
        if _same_weights(store, experiment, int(step), weights):
            return "unchanged"  # rerunning an interrupted import finishes the job
        raise ExperimentExistsError(
            f"experiment {experiment!r} already has weights at step {int(step)}; "
            "pass overwrite=True (CLI: --overwrite) to replace them"
        )
    extra = {k: v for k, v in (info or {}).items() if k not in _RESERVED_INFO}
    return store.write_snapshot(
        experiment, int(step), weights=weights, info=extra, overwrite=overwrite
    )


def _same_weights(
    store: Store, experiment: str, step: int, weights: Mapping[str, np.ndarray]
) -> bool:
    """Whether the weights stored at ``step`` equal ``weights`` exactly (same names too)."""
    stored = store.weights(experiment, steps=[step])
    if set(stored) != set(weights):
        return False
    return all(
        stored[name].shape[1:] == weights[name].shape
        and np.array_equal(np.asarray(stored[name].values[0]), weights[name], equal_nan=True)
        for name in weights
    )


def _progress(items: Sequence[Path], enabled: bool) -> Iterator[Path]:
    for i, item in enumerate(items, 1):
        if enabled:
            print(f"\r[{i}/{len(items)}] {item.name}", end="", file=sys.stderr, flush=True)
        yield item
    if enabled and items:
        print(file=sys.stderr)


def ingest_checkpoints(
    store: Store,
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    experiment: str,
    include_optimizer: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[int, str]:
    """Store checkpoint files as weight snapshots of ``experiment``, one per training step.

    Parameters
    ----------
    store
        A writable store.
    source
        A checkpoint file, a directory of them, or a list of files. A ``.pt``
        may be a bare state_dict or a dict with ``model_state_dict`` (or
        ``state_dict``) and scalars (``step``, ``loss`` ...), which are kept as
        snapshot info.
    experiment
        Target experiment; created (empty Phase 1 series) if absent.
    include_optimizer
        Not supported yet: optimizer state is never stored (raises
        :class:`~ndt_store.errors.NdtStoreError` when ``True``).
    overwrite
        Replace weights already stored at a step.
    progress
        Print progress to standard error.

    Returns
    -------
    dict
        ``{step: "created" | "replaced" | "unchanged"}`` in step order.

    Raises
    ------
    UnsafeCheckpointError
        A file would need arbitrary code to load (nothing of it is stored).
    InputError
        No step in the file or its name, or two files for one step.
    """
    if include_optimizer:
        raise NdtStoreError(
            "include_optimizer=True is not supported yet: ndt_store stores model weights only; "
            "optimizer state is skipped"
        )
    files = find_checkpoints(source)
    for path in files:  # refuse unsafe pickles before anything is stored
        if path.suffix != ".safetensors":
            check_checkpoint_safe(path)
    result: dict[int, str] = {}
    origin: dict[int, Path] = {}
    for path in _progress(files, progress):
        weights, info = load_checkpoint(path)  # one file in memory at a time
        step = info.get("step")
        step = step_from_name(path) if step is None else step
        if step is None or isinstance(step, bool) or int(step) != step:
            raise InputError(
                "no training step: neither a 'step' entry nor a step in the file name",
                source=path,
            )
        step = int(step)
        if step in origin:
            raise InputError(
                f"step {step} also comes from {origin[step].name}", source=path, field="step"
            )
        origin[step] = path
        result[step] = ingest_state_dict(
            store,
            experiment,
            step,
            weights,
            info={**info, "source": path.name},
            overwrite=overwrite,
        )
    return dict(sorted(result.items()))
