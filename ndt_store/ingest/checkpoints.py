"""Ingest model checkpoints (PyTorch ``.pt``, safetensors, Trainer folders, state_dicts) as weights.

Each checkpoint becomes one committed weight snapshot of an experiment at its
training step (:meth:`ndt_store.store.Store.write_snapshot`). Checkpoints may
arrive in any order; the store keeps snapshots sorted by step. Folder layouts
(``checkpoint-N/``, ``step_N/``, sharded safetensors ...) are found by
:mod:`ndt_store.ingest.checkpoint_layout`; a Trainer's ``trainer_state.json``
becomes Phase 1 loss / gradient-norm records and ``config.json`` run metadata
(:mod:`ndt_store.ingest.trainer_state`).

All or nothing: every checkpoint is scanned first (safety, size, step, tensor
names and dtypes, without reading the tensor data), so a bad file is refused
before anything is written; an experiment created by an ingest that then fails
(disk full, out of memory) is removed again.

Safety: a ``.pt`` file is a pickle. It is opened only with
``torch.load(path, map_location="cpu", weights_only=True)`` (passed explicitly,
so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off), with numpy scalar
types allowed for older checkpoints. A file whose pickle names any other global
is refused with :class:`~ndt_store.errors.UnsafeCheckpointError` before it is
unpickled; nothing in it runs. There is no unsafe fallback.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from ndt_store import _dims as D
from ndt_store._names import validate_name
from ndt_store.errors import (
    ExperimentExistsError,
    InputError,
    NdtStoreError,
    UnsafeCheckpointError,
    require,
)
from ndt_store.ingest.checkpoint_layout import (
    CHECKPOINT_SUFFIXES,
    TRAINER_STATE,
    Candidate,
    check_step,
    find_candidates,
    step_from_name,
)
from ndt_store.ingest.trainer_state import LossHistory, read_config, read_loss_history
from ndt_store.store import Store

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CheckpointInfo",
    "CheckpointPlan",
    "check_checkpoint_safe",
    "find_checkpoints",
    "ingest_checkpoints",
    "ingest_state_dict",
    "load_checkpoint",
    "scan_checkpoints",
    "step_from_name",
]

PathLike = str | os.PathLike[str]
STATE_KEYS: tuple[str, ...] = ("model_state_dict", "state_dict", "model")
"""Keys under which a checkpoint dict may hold the model's state_dict."""
NON_WEIGHT_KEYS = frozenset(
    {"optimizer", "optimizer_state_dict", "optimizer_states", "scheduler", "lr_scheduler",
     "lr_schedulers", "scaler", "rng_state", "callbacks", "loops", "hyper_parameters"}
)  # fmt: skip
"""Entries of a bare checkpoint dict that are training state, not model weights (skipped)."""
_RESERVED_INFO = {"step", "row", "kinds", "model_state_dict", "state_dict", "model"}
_NUMERIC_KINDS = "fiub"
_SAFETENSORS_DTYPES = {
    "BOOL": (1, "b"), "U8": (1, "u"), "I8": (1, "i"), "U16": (2, "u"), "I16": (2, "i"),
    "U32": (4, "u"), "I32": (4, "i"), "U64": (8, "u"), "I64": (8, "i"), "F16": (2, "f"),
    "BF16": (2, "f"), "F32": (4, "f"), "F64": (8, "f"),
}  # fmt: skip


def default_max_bytes() -> int:
    """Default size guard: half the machine's physical memory (a checkpoint is read whole)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 32 * 2**30


# --------------------------------------------------------------------- safety
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


def declared_bytes(path: Path) -> int:
    """Bytes a checkpoint file declares it holds once inflated (read from its headers only).

    A ``.pt`` zip archive: the sum of its entries' uncompressed sizes; a safetensors
    file: its header's tensor byte spans; anything else: its size on disk.
    """
    if path.suffix == ".safetensors":
        return sum(_safetensors_header(path)[1].values())
    try:
        with zipfile.ZipFile(path) as zf:
            return sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError):
        return path.stat().st_size


def _check_size(path: Path, max_bytes: int) -> int:
    nbytes = declared_bytes(path)
    if nbytes > max_bytes:
        raise InputError(
            f"declares {nbytes:,} bytes of tensors, over the limit of {max_bytes:,} "
            "(refused before inflating it; raise max_bytes / --max-bytes if it is genuine)",
            source=path,
        )
    return nbytes


# ------------------------------------------------------------------ reading
def _safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """(header, {tensor: bytes}) of a safetensors file, parsed without reading tensor data."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 2**20:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(f.read(n))
        size = path.stat().st_size
    except (OSError, ValueError, struct.error, RecursionError) as exc:
        raise InputError(f"not a safetensors file ({exc})", source=path) from None
    if not isinstance(header, dict):
        raise InputError("not a safetensors file (header is not an object)", source=path)
    spans: dict[str, int] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in entry["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise InputError("malformed tensor entry", source=path, field=name) from None
        if not 0 <= start <= end or 8 + n + end > size:
            raise InputError("tensor data lies beyond the end of the file", source=path, field=name)
        spans[name] = end - start
    return header, spans


def _dtype_problem(dtype: str) -> str | None:
    """Why a tensor dtype cannot be stored as a numeric array, or ``None``."""
    d = dtype.lower()
    if "float8" in d or d.startswith("f8") or "e4m3" in d or "e5m2" in d:
        return f"float8 tensor ({dtype}) is not supported; cast it to float16/float32 first"
    if d.startswith(("torch.q", "q")) and d.rstrip("0123456789").endswith(("qint", "quint")):
        return f"quantized tensor ({dtype}) is not supported; dequantize it first"
    if "complex" in d or d in ("c64", "c128"):
        return f"complex tensor ({dtype}) is not supported; store real and imaginary parts"
    return None


def _describe_tensor(value: Any, name: str, source: Path) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) of a tensor or array, refusing what cannot be stored (one-line error)."""
    if _is_tensor(value):
        import torch

        if value.layout != torch.strided:
            raise InputError(
                f"tensor {name!r} is sparse ({value.layout}); densify it (.to_dense()) first",
                source=source,
            )
        if value.is_quantized:
            raise InputError(
                f"tensor {name!r}: quantized tensor ({value.dtype}) is not supported; "
                "dequantize it first",
                source=source,
            )
        problem = _dtype_problem(str(value.dtype)) or (
            f"complex tensor ({value.dtype}) is not supported" if value.is_complex() else None
        )
        if problem:
            raise InputError(f"tensor {name!r}: {problem}", source=source)
        return str(value.dtype).removeprefix("torch."), tuple(value.shape)
    arr = np.asarray(value)
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise InputError(
            f"tensor {name!r}: dtype {arr.dtype} is not numeric (int, uint, float or bool)",
            source=source,
        )
    return str(arr.dtype), arr.shape


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _to_numpy(value: Any) -> np.ndarray:
    if _is_tensor(value):
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return np.asarray(t.numpy())
    return np.asarray(value)


def _flatten(state: Mapping[Any, Any], source: Path, prefix: str = "") -> dict[str, Any]:
    """``{dotted name: tensor}`` of a (possibly nested) state dict; other leaves are refused."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, source, f"{name}."))
        elif _is_tensor(value) or isinstance(value, np.ndarray):
            out[name] = value
        else:
            raise InputError(
                f"state dict entry {name!r} is a {type(value).__name__}, not a tensor "
                "(only tensors and dicts of tensors are model weights)",
                source=source,
            )
    return out


def _split_checkpoint(obj: Any, source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flat state_dict, scalar info) of a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise InputError(
            f"expected a state_dict or a dict holding one, got {type(obj).__name__}",
            source=source,
        )
    key = next((k for k in STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
    info: dict[str, Any] = {}
    if key is not None:
        for k, v in obj.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, bool | int | float | str) and k != key:
                info[str(k)] = v
        return _flatten(obj[key], source), info
    weights: dict[str, Any] = {}  # a bare dict: tensors (nested too) and scalars
    for k, v in obj.items():
        if isinstance(v, np.generic):
            v = v.item()
        if k in NON_WEIGHT_KEYS:
            continue
        if isinstance(v, bool | int | float | str):
            info[str(k)] = v
        elif isinstance(v, Mapping):
            weights.update(_flatten(v, source, f"{k}."))
        elif _is_tensor(v) or isinstance(v, np.ndarray):
            weights[str(k)] = v
        else:
            raise InputError(
                f"entry {k!r} is a {type(v).__name__}: neither a tensor, a dict of tensors "
                "nor a scalar",
                source=source,
            )
    return weights, info


def _load_pt(path: Path, *, mmap: bool = False) -> Any:
    torch = require("torch", "torch")
    from torch.serialization import safe_globals

    check_checkpoint_safe(path)
    try:
        with safe_globals(_safe_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:  # the old non-zip format cannot be mapped
                if not mmap or "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise UnsafeCheckpointError(
                f"{path}: refused; it is not loadable with weights_only=True "
                f"({exc.__class__.__name__})"
            ) from None
        raise InputError(f"cannot load checkpoint ({exc})", source=path) from None


def _safetensors_info(path: Path) -> dict[str, Any]:
    header, _ = _safetensors_header(path)
    info: dict[str, Any] = {}
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise InputError("safetensors __metadata__ is not an object", source=path)
    for key, value in meta.items():
        if key == "step":
            info[key] = check_step(value, path)
            continue
        try:
            info[key] = float(value)
        except (TypeError, ValueError):
            info[key] = value
    return info


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    require("safetensors", "safetensors")
    from safetensors import safe_open

    header, _ = _safetensors_header(path)
    needs_torch = any(
        isinstance(e, dict) and e.get("dtype") == "BF16"
        for k, e in header.items()
        if k != "__metadata__"
    )
    if needs_torch:
        require("torch", "torch")
    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="pt" if needs_torch else "np") as f:
            for key in f.keys():
                tensors[key] = _to_numpy(f.get_tensor(key))
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read safetensors file ({exc})", source=path) from None
    return tensors


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read one checkpoint file safely: ``({parameter: array}, {scalar info})``.

    ``.pt``/``.pth``/``.bin`` files go through ``torch.load(..., weights_only=True)``
    only; ``.safetensors`` files through safetensors (metadata become info). Nested
    dicts inside a state dict become dotted names (``sub.inner.weight``).

    Raises
    ------
    UnsafeCheckpointError
        The pickle needs globals other than tensors and numpy scalars.
    InputError
        The file cannot be read, holds no state_dict, or holds a tensor that
        cannot be stored (complex, float8, quantized, sparse).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        _scan_safetensors(path)
        return _load_safetensors(path), _safetensors_info(path)
    state, info = _split_checkpoint(_load_pt(path), path)
    for name, value in state.items():
        _describe_tensor(value, name, path)
    return {name: _to_numpy(v) for name, v in state.items()}, info


# ------------------------------------------------------------------ scanning
@dataclass
class CheckpointInfo:
    """One checkpoint found by :func:`scan_checkpoints`: its step, files and tensors."""

    step: int
    source: Path
    files: list[Path]
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    """``{name: (dtype, shape)}`` as stored in the files."""
    nbytes: int
    """Tensor bytes the files declare."""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointPlan:
    """What :func:`ingest_checkpoints` would import: checkpoints, loss history, metadata."""

    checkpoints: list[CheckpointInfo]
    skipped: list[tuple[Path, str]]
    history: LossHistory | None
    metadata: dict[str, Any]

    @property
    def nbytes(self) -> int:
        """Tensor bytes of all checkpoints."""
        return sum(c.nbytes for c in self.checkpoints)

    def describe(self) -> str:
        """One line per checkpoint (step, tensors, bytes, source), then the extras."""
        lines = [f"{'step':>10s} {'tensors':>8s} {'bytes':>15s}  source"]
        for c in self.checkpoints:
            lines.append(f"{c.step:>10d} {len(c.tensors):>8d} {c.nbytes:>15,d}  {c.source}")
        lines.append(f"{len(self.checkpoints)} checkpoints, {self.nbytes:,} bytes of tensors")
        if self.history is not None:
            lines.append(f"loss history: {len(self.history)} records from {self.history.source}")
        if "model_config" in self.metadata:
            lines.append(f"model config: {self.metadata.get(D.ARCH_NAME, 'unnamed')}")
        lines += [f"skipped {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


def _scan_safetensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    header, _ = _safetensors_header(path)
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = str(entry.get("dtype"))
        if dtype not in _SAFETENSORS_DTYPES:
            problem = _dtype_problem(dtype) or f"dtype {dtype} is not supported"
            raise InputError(f"tensor {name!r}: {problem}", source=path)
        out[name] = (dtype, tuple(int(x) for x in entry.get("shape", ())))
    return out


def _scan_file(path: Path, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(tensors, info, bytes) of one file, checked without reading its tensor data."""
    nbytes = _check_size(path, max_bytes)
    if path.suffix == ".safetensors":
        return _scan_safetensors(path), _safetensors_info(path), nbytes
    state, info = _split_checkpoint(_load_pt(path, mmap=True), path)
    return {n: _describe_tensor(v, n, path) for n, v in state.items()}, info, nbytes


def _scan_candidate(cand: Candidate, max_bytes: int, history_step: int | None) -> CheckpointInfo:
    tensors: dict[str, Any] = {}
    info: dict[str, Any] = {}
    total = 0
    for path in cand.files:
        found, file_info, nbytes = _scan_file(path, max_bytes)
        for name in found:
            if name in tensors:
                raise InputError(f"tensor {name!r} is also in another file of this checkpoint",
                                 source=path)  # fmt: skip
            validate_name(name, kind="parameter")
        tensors.update(found)
        info.update(file_info)
        total += nbytes
    if total > max_bytes:
        raise InputError(
            f"declares {total:,} bytes of tensors, over the limit of {max_bytes:,}",
            source=cand.source,
        )
    if not tensors:
        raise InputError("the checkpoint holds no tensors", source=cand.source)
    step: Any = cand.step
    if not cand.folder and info.get("step") is not None:
        step = info["step"]  # a file's own step entry wins over its name
    if step is None:
        step = info.get("step", history_step)
    if step is None:
        raise InputError(
            "no training step: neither a 'step' entry nor a step in the file or folder name",
            source=cand.source,
        )
    return CheckpointInfo(check_step(step, cand.source), cand.source, cand.files, tensors, total,
                          info)  # fmt: skip


def scan_checkpoints(
    source: PathLike | Iterable[PathLike], *, max_bytes: int | None = None
) -> CheckpointPlan:
    """Find and check every checkpoint under ``source`` without reading tensor data.

    Safety scans, size guard, steps, tensor names and dtypes are all checked here,
    so :func:`ingest_checkpoints` refuses a bad file before it writes anything; the
    plan's :meth:`~CheckpointPlan.describe` is what ``ingest checkpoints --dry-run``
    prints.

    Parameters
    ----------
    source
        A checkpoint file, a folder tree (see :mod:`ndt_store.ingest.checkpoint_layout`)
        or a list of files.
    max_bytes
        Refuse a checkpoint whose files declare more tensor bytes than this (checked
        from headers, before inflating anything). Default: half the physical memory.
    """
    limit = default_max_bytes() if max_bytes is None else int(max_bytes)
    candidates = find_candidates(source)
    for cand in candidates:  # refuse unsafe pickles before anything else
        for path in cand.files:
            if path.suffix != ".safetensors":
                check_checkpoint_safe(path)
    histories = {}
    for cand in candidates:
        if cand.trainer_state is not None:
            histories[cand.source] = read_loss_history(cand.trainer_state)
    root = Path(source) if isinstance(source, str | os.PathLike) else None
    if root is not None and root.is_dir() and (root / TRAINER_STATE).is_file():
        histories.setdefault(root, read_loss_history(root / TRAINER_STATE))

    found: list[CheckpointInfo] = []
    skipped: list[tuple[Path, str]] = []
    unnamed_folders: list[Candidate] = []
    for cand in candidates:
        if cand.folder and cand.step is None:
            unnamed_folders.append(cand)
            continue
        found.append(_scan_candidate(cand, limit, None))
    named_steps = {c.step for c in found}
    for cand in unnamed_folders:
        hist = histories.get(cand.source)
        step = hist.global_step if hist is not None and hist.global_step >= 0 else None
        if step is None and (found or len(unnamed_folders) > 1):
            skipped.append((cand.source, "no training step in its name or a trainer_state.json"))
            continue
        if step is not None and step in named_steps:
            skipped.append((cand.source, f"step {step} comes from a checkpoint folder too"))
            continue
        found.append(_scan_candidate(cand, limit, step))
    origin: dict[int, Path] = {}
    for ck in found:
        if ck.step in origin:
            raise InputError(
                f"step {ck.step} also comes from {origin[ck.step].name}",
                source=ck.source,
                field="step",
            )
        origin[ck.step] = ck.source
    found.sort(key=lambda c: c.step)

    history = max(histories.values(), key=lambda h: (h.global_step, len(h)), default=None)
    metadata: dict[str, Any] = {}
    configs = [c for c in candidates if c.config is not None]
    if root is not None and root.is_dir() and (root / "config.json").is_file():
        metadata = read_config(root / "config.json")
    elif configs:
        latest = max(configs, key=lambda c: c.step if c.step is not None else -1)
        assert latest.config is not None
        metadata = read_config(latest.config)
    return CheckpointPlan(found, skipped, history, metadata)


def find_checkpoints(source: PathLike | Iterable[PathLike]) -> list[Path]:
    """Sources (files or checkpoint folders) of the checkpoints under ``source``."""
    return [c.source for c in find_candidates(source)]


# ------------------------------------------------------------------ writing
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

    Creates the experiment (empty Phase 1 series) if it is absent; if writing then
    fails, the experiment is removed again. Nested dicts become dotted names.

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> store = ndt_store.open_store(tempfile.mkdtemp() + "/s.zarr")
    >>> ingest_state_dict(store, "run", 10, {"fc.weight": np.ones((2, 3))})
    'created'
    >>> store.weights("run")["fc.weight"].dims
    ('step', 'out', 'in')
    """
    where = Path(f"<state_dict of {experiment} at step {step}>")
    step = check_step(step, where)
    flat = _flatten(state_dict, where)
    for name, value in flat.items():
        _describe_tensor(value, name, where)
    weights = {name: _to_numpy(v) for name, v in flat.items()}
    if not weights:
        raise InputError(f"experiment {experiment!r} step {step}: the state_dict is empty")
    validate_name(experiment)
    for name in weights:  # refuse before anything (even the experiment) is created
        validate_name(name, kind="parameter")
    created = experiment not in store
    try:
        if created:
            store.create_run(experiment, {}, [])
        return _write_weights(store, experiment, step, weights, info, overwrite)
    except BaseException:
        _remove_if_created(store, experiment, created)
        raise


def _write_weights(
    store: Store,
    experiment: str,
    step: int,
    weights: Mapping[str, np.ndarray],
    info: Mapping[str, Any] | None,
    overwrite: bool,
) -> Literal["created", "unchanged", "replaced"]:
    if not overwrite and step in store.snapshot_steps(experiment, D.WEIGHTS):
        if _same_weights(store, experiment, step, weights):
            return "unchanged"  # rerunning an interrupted import finishes the job
        raise ExperimentExistsError(
            f"experiment {experiment!r} already has weights at step {step}; "
            "pass overwrite=True (CLI: --overwrite) to replace them"
        )
    extra = {k: v for k, v in (info or {}).items() if k not in _RESERVED_INFO}
    return store.write_snapshot(experiment, step, weights=weights, info=extra, overwrite=overwrite)


def _remove_if_created(store: Store, experiment: str, created: bool) -> None:
    """Undo the creation of ``experiment`` after a failed ingest (the store is as before)."""
    if not created:
        return
    try:
        store.refresh()
        if experiment in store:
            store.delete_experiment(experiment, keep_for_readers=False)
    except Exception:  # the original error matters more; a later write removes leftovers
        pass


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


def _progress(items: Sequence[CheckpointInfo], enabled: bool) -> Iterator[CheckpointInfo]:
    for i, item in enumerate(items, 1):
        if enabled:
            print(f"\r[{i}/{len(items)}] {item.source.name}", end="", file=sys.stderr, flush=True)
        yield item
    if enabled and items:
        print(file=sys.stderr)


def _load_weights(ck: CheckpointInfo) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for path in ck.files:
        weights.update(load_checkpoint(path)[0])
    return weights


def _append_history(store: Store, experiment: str, history: LossHistory) -> int:
    """Append the loss history's records after the last stored Phase 1 step; their count."""
    ds = store.phase1(experiment)
    steps = ds[D.STEP].values
    cols = history.arrays(after=int(steps[-1]) if steps.size else None)
    n = cols[D.STEP].size
    if n == 0:
        return 0
    layers = [str(x) for x in ds[D.LAYER].values]
    nan = np.full((n, len(layers)), np.nan)
    data: dict[str, Any] = {m: ((D.STEP, D.LAYER), nan) for m in D.PHASE1_METRICS}
    for name in (D.LOSS, D.GRAD_NORM, D.EPOCH):
        data[name] = (D.STEP, cols[name])
    rows = xr.Dataset(data, coords={D.STEP: cols[D.STEP], D.LAYER: layers})
    store.append_phase1(experiment, rows)
    return n


def ingest_checkpoints(
    store: Store,
    source: PathLike | Iterable[PathLike],
    *,
    experiment: str,
    include_optimizer: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    max_bytes: int | None = None,
    history: bool = True,
) -> dict[int, str]:
    """Store checkpoints as weight snapshots of ``experiment``, one per training step.

    Parameters
    ----------
    store
        A writable store.
    source
        A checkpoint file, a folder tree of them (``checkpoint-N/``, ``step_N/``,
        sharded safetensors, loose ``.pt``/``.pth``/``.safetensors`` files; see
        :mod:`ndt_store.ingest.checkpoint_layout`), or a list of files. A ``.pt``
        may be a bare state_dict or a dict with ``model_state_dict`` (or
        ``state_dict``) and scalars (``step``, ``loss`` ...), which are kept as
        snapshot info.
    experiment
        Target experiment; created (empty Phase 1 series, ``config.json`` as
        metadata) if absent.
    include_optimizer
        Not supported yet: optimizer state is never stored (raises
        :class:`~ndt_store.errors.NdtStoreError` when ``True``).
    overwrite
        Replace weights already stored at a step.
    progress
        Print progress to standard error.
    max_bytes
        Size guard per checkpoint (see :func:`scan_checkpoints`).
    history
        Append a ``trainer_state.json``'s training records (loss, gradient norm,
        epoch) as Phase 1 records after the experiment's last stored one.

    Returns
    -------
    dict
        ``{step: "created" | "replaced" | "unchanged"}`` in step order.

    Raises
    ------
    UnsafeCheckpointError
        A file would need arbitrary code to load (nothing is stored).
    InputError
        No step, two checkpoints for one step, a tensor that cannot be stored, a
        checkpoint over ``max_bytes``... (nothing is stored).
    """
    if include_optimizer:
        raise NdtStoreError(
            "include_optimizer=True is not supported yet: ndt_store stores model weights only; "
            "optimizer state is skipped"
        )
    validate_name(experiment)
    plan = scan_checkpoints(source, max_bytes=max_bytes)
    if not plan.checkpoints:
        raise InputError("no checkpoint with a training step", source=source)
    created = experiment not in store
    result: dict[int, str] = {}
    try:
        if created:
            store.create_run(experiment, plan.metadata, [])
        elif plan.metadata and "model_config" not in store.metadata(experiment):
            store.update_metadata(experiment, **plan.metadata)
        for ck in _progress(plan.checkpoints, progress):
            weights = _load_weights(ck)  # one checkpoint in memory at a time
            info = {**ck.info, "source": ck.source.name}
            result[ck.step] = _write_weights(store, experiment, ck.step, weights, info, overwrite)
            del weights
        if history and plan.history is not None:
            _append_history(store, experiment, plan.history)
    except BaseException:
        _remove_if_created(store, experiment, created)
        raise
    return dict(sorted(result.items()))
