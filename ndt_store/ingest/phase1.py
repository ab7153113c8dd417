"""Ingest the study's per-experiment Phase 1 JSON files (format: shared data README).

Every file is parsed and validated completely before anything is written, so a
bad file leaves the store exactly as it was; each experiment is then written as
one atomic unit (see :meth:`ndt_store.store.Store.write_experiment`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ndt_store import _dims as D
from ndt_store._names import validate_name
from ndt_store.errors import InputError, InvalidNameError
from ndt_store.store import Store

LEGACY_PHASE1_DIR = Path("new") / "results" / "phase1_full"
"""Where the study kept its per-experiment JSON, relative to its experiments directory."""

_RECORD_SCALARS = ((D.LOSS, float), (D.GRAD_NORM, float))
_OPTIONAL_META = {
    D.NUM_STEPS: int,
    D.MEASUREMENT_INTERVAL: int,
    D.FINAL_ACCURACY: float,
    D.ELAPSED_TIME: float,
}


@dataclass(frozen=True)
class Phase1Experiment:
    """One parsed, validated Phase 1 experiment, ready to store.

    Attributes
    ----------
    name
        Experiment name (the file stem).
    dataset
        Dataset over ``(step, layer)``.
    metadata
        Run metadata (``arch_name``, ``dataset``, ``num_steps``, ...).
    content_hash
        SHA-256 of the parsed content (identical content, identical hash).
    source
        Where it was read from.
    """

    name: str
    dataset: xr.Dataset
    metadata: dict[str, Any]
    content_hash: str
    source: str


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any, *, source: str, record: Any, field: str, allow_nonfinite: bool) -> float:
    if not _is_number(value):
        raise InputError(
            f"expected a number, got {type(value).__name__}",
            source=source,
            record=record,
            field=field,
            value=value,
            has_value=True,
        )
    try:
        out = float(value)
    except OverflowError:
        raise InputError(
            "number out of the float64 range",
            source=source,
            record=record,
            field=field,
            value=value,
            has_value=True,
        ) from None
    if not math.isfinite(out):
        if not allow_nonfinite:
            raise InputError(
                "non-finite value refused (pass allow_nonfinite=True / --allow-nonfinite to "
                "store it as missing)",
                source=source,
                record=record,
                field=field,
                value=value,
                has_value=True,
            )
        return math.nan
    return out


def _integer(value: Any, *, source: str, record: Any, field: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(
            f"expected an integer, got {type(value).__name__}",
            source=source,
            record=record,
            field=field,
            value=value,
            has_value=True,
        )
    if not -(2**63) <= value < 2**63:
        raise InputError(
            "integer out of the 64-bit range",
            source=source,
            record=record,
            field=field,
            value=value,
            has_value=True,
        )
    return int(value)


def parse_phase1(
    obj: Any,
    *,
    name: str,
    source: str = "<memory>",
    allow_nonfinite: bool = False,
) -> Phase1Experiment:
    """Validate a parsed Phase 1 JSON object and convert it to a labeled dataset.

    Parameters
    ----------
    obj
        The parsed JSON (a dict with ``measurements`` and run metadata).
    name
        Experiment name.
    source
        File name used in error messages.
    allow_nonfinite
        Store NaN/Infinity values as missing instead of refusing them.

    Raises
    ------
    InputError
        Naming the source, record and field at fault.
    """
    try:
        validate_name(name)
    except InvalidNameError as exc:
        raise InputError(str(exc), source=source) from None
    if not isinstance(obj, dict):
        raise InputError("top level must be a JSON object", source=source, value=type(obj).__name__)
    for key in ("measurements", D.ARCH_NAME, "dataset_name"):
        if key not in obj:
            raise InputError("missing required key", source=source, field=key)
    for key in (D.ARCH_NAME, "dataset_name"):
        if not isinstance(obj[key], str) or not obj[key]:
            raise InputError(
                "expected a non-empty string",
                source=source,
                field=key,
                value=obj[key],
                has_value=True,
            )
    records = obj["measurements"]
    if not isinstance(records, list) or not records:
        raise InputError(
            "expected a non-empty list of records",
            source=source,
            field="measurements",
            value=type(records).__name__,
        )
    metadata: dict[str, Any] = {D.ARCH_NAME: obj[D.ARCH_NAME], D.DATASET: obj["dataset_name"]}
    for key, kind in _OPTIONAL_META.items():
        if key in obj and obj[key] is not None:
            if kind is int:
                metadata[key] = _integer(obj[key], source=source, record=None, field=key)
            else:
                metadata[key] = _number(
                    obj[key], source=source, record=None, field=key, allow_nonfinite=False
                )
    if D.ARCHITECTURE_PARAMS in obj:
        params = obj[D.ARCHITECTURE_PARAMS]
        if not isinstance(params, dict):
            raise InputError(
                "expected an object",
                source=source,
                field=D.ARCHITECTURE_PARAMS,
                value=params,
                has_value=True,
            )
        for key, value in params.items():
            if _is_number(value) and not math.isfinite(float(value)):
                raise InputError(
                    "non-finite value refused",
                    source=source,
                    field=f"{D.ARCHITECTURE_PARAMS}.{key}",
                    value=value,
                    has_value=True,
                )
        metadata[D.ARCHITECTURE_PARAMS] = params
    extra = {
        k: v
        for k, v in obj.items()
        if k
        not in {"measurements", D.ARCH_NAME, "dataset_name", D.ARCHITECTURE_PARAMS, *_OPTIONAL_META}
    }
    if extra:
        metadata["extra"] = extra

    first = records[0]
    if not isinstance(first, dict) or not isinstance(first.get("layer_metrics"), dict):
        raise InputError(
            "record must be an object with a 'layer_metrics' object",
            source=source,
            record=0,
            field="layer_metrics",
        )
    layers = list(first["layer_metrics"])
    if not layers:
        raise InputError(
            "no layers in layer_metrics", source=source, record=0, field="layer_metrics"
        )
    for layer in layers:
        try:
            validate_name(layer, kind="layer", path=False)
        except InvalidNameError as exc:
            raise InputError(str(exc), source=source, record=0, field="layer_metrics") from None
    n, n_l = len(records), len(layers)
    steps = np.empty(n, dtype=np.int64)
    epochs = np.empty(n, dtype=np.int64)
    scalars = {key: np.empty(n) for key, _ in _RECORD_SCALARS}
    metrics = np.empty((n, n_l, len(D.PHASE1_METRICS)))
    layer_set = set(layers)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(
                "record must be an object", source=source, record=i, value=type(rec).__name__
            )
        for key in (D.STEP, D.EPOCH, D.LOSS, D.GRAD_NORM, "layer_metrics"):
            if key not in rec:
                raise InputError("missing required key", source=source, record=i, field=key)
        steps[i] = _integer(rec[D.STEP], source=source, record=i, field=D.STEP)
        label = f"{i} (step {steps[i]})"
        if steps[i] < 0:
            raise InputError("steps must be >= 0", source=source, record=label, field=D.STEP)
        if i and steps[i] <= steps[i - 1]:
            what = "duplicate" if steps[i] == steps[i - 1] else "decreasing"
            raise InputError(
                f"{what} step: {steps[i]} follows {steps[i - 1]}; steps must strictly increase",
                source=source,
                record=label,
                field=D.STEP,
            )
        epochs[i] = _integer(rec[D.EPOCH], source=source, record=label, field=D.EPOCH)
        for key, _ in _RECORD_SCALARS:
            scalars[key][i] = _number(
                rec[key], source=source, record=label, field=key, allow_nonfinite=allow_nonfinite
            )
        lm = rec["layer_metrics"]
        if not isinstance(lm, dict):
            raise InputError(
                "expected an object",
                source=source,
                record=label,
                field="layer_metrics",
                value=type(lm).__name__,
            )
        if len(lm) != n_l or set(lm) != layer_set:
            missing = [x for x in layers if x not in lm]
            extra_l = [x for x in lm if x not in layer_set]
            what = f"missing layers {missing}" if missing else f"unexpected layers {extra_l}"
            raise InputError(
                f"layer set differs from record 0: {what}",
                source=source,
                record=label,
                field="layer_metrics",
            )
        for j, layer in enumerate(layers):
            values = lm[layer]
            if not isinstance(values, dict):
                raise InputError(
                    "expected an object",
                    source=source,
                    record=label,
                    field=f"layer_metrics.{layer}",
                    value=values,
                    has_value=True,
                )
            for k, metric in enumerate(D.PHASE1_METRICS):
                field = f"layer_metrics.{layer}.{metric}"
                if metric not in values:
                    raise InputError(
                        "missing required key", source=source, record=label, field=field
                    )
                metrics[i, j, k] = _number(
                    values[metric],
                    source=source,
                    record=label,
                    field=field,
                    allow_nonfinite=allow_nonfinite,
                )
    data_vars: dict[str, Any] = {
        m: ((D.STEP, D.LAYER), metrics[:, :, k]) for k, m in enumerate(D.PHASE1_METRICS)
    }
    data_vars.update({key: (D.STEP, scalars[key]) for key, _ in _RECORD_SCALARS})
    data_vars[D.EPOCH] = (D.STEP, epochs)
    ds = xr.Dataset(data_vars, coords={D.STEP: steps, D.LAYER: np.asarray(layers, dtype=str)})
    digest = hashlib.sha256(
        json.dumps([name, obj], sort_keys=True, allow_nan=True).encode()
    ).hexdigest()
    return Phase1Experiment(name, ds, metadata, digest, source)


def read_phase1_json(
    path: str | os.PathLike[str], *, name: str | None = None, allow_nonfinite: bool = False
) -> Phase1Experiment:
    """Read and validate one Phase 1 JSON file (experiment name = file stem)."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", source=path) from None
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"malformed JSON: {exc}", source=path) from None
    except RecursionError:
        raise InputError("JSON nested too deeply to read", source=path) from None
    try:
        return parse_phase1(
            obj, name=name or path.stem, source=str(path), allow_nonfinite=allow_nonfinite
        )
    except RecursionError:  # a value nested deeply enough to exhaust the stack when hashed
        raise InputError("JSON nested too deeply to read", source=path) from None


def find_phase1_files(source: str | os.PathLike[str]) -> list[Path]:
    """The Phase 1 JSON files under ``source``.

    ``source`` may be one file, a directory of ``*.json`` files, a directory with a
    ``phase1_full/`` folder, or a legacy experiments tree (``new/results/phase1_full``).
    """
    src = Path(source)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise InputError("no such file or directory", source=src)
    for candidate in (src / LEGACY_PHASE1_DIR, src / "phase1_full", src / "phase1" / "phase1_full"):
        if candidate.is_dir():
            src = candidate
            break
    files = sorted(p for p in src.glob("*.json") if p.is_file())
    if not files:
        raise InputError("no Phase 1 *.json files found", source=src)
    return files


def read_phase1_files(
    files: Sequence[Path], *, allow_nonfinite: bool = False, progress: bool = False
) -> list[Phase1Experiment]:
    """Parse and validate every file (all or nothing)."""
    out = []
    names: dict[str, Path] = {}
    for path in _progress(files, progress, "parsing"):
        exp = read_phase1_json(path, allow_nonfinite=allow_nonfinite)
        if exp.name in names:
            raise InputError(
                f"experiment {exp.name!r} also defined by {names[exp.name]}", source=path
            )
        names[exp.name] = path
        out.append(exp)
    return out


def ingest_phase1(
    store: Store,
    source: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    progress: bool = False,
) -> dict[str, str]:
    """Ingest Phase 1 JSON from a file, a directory of files or a legacy tree.

    Parameters
    ----------
    store
        Store to write into.
    source
        File or directory (see :func:`find_phase1_files`).
    overwrite
        Replace experiments that exist with different content.
    allow_nonfinite
        Store NaN/Infinity as missing values instead of refusing the file.
    progress
        Show a progress bar.

    Returns
    -------
    dict
        ``{experiment: "created" | "unchanged" | "replaced"}``.

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> from ndt_store.testing import write_phase1_json
    >>> tmp = tempfile.mkdtemp()
    >>> path = write_phase1_json(tmp + "/toy_mlp.json", n_records=20, layers=["fc1", "fc2"])
    >>> store = ndt_store.open_store(tmp + "/s.zarr")
    >>> ingest_phase1(store, path)
    {'toy_mlp': 'created'}
    """
    experiments = read_phase1_files(
        find_phase1_files(source), allow_nonfinite=allow_nonfinite, progress=progress
    )
    return write_phase1(store, experiments, overwrite=overwrite, progress=progress)


def write_phase1(
    store: Store,
    experiments: Iterable[Phase1Experiment],
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, str]:
    """Write parsed experiments; refuses up front if any would clash without overwrite."""
    experiments = list(experiments)
    if not overwrite:
        store.refresh()
        existing = set(store.experiments())
        for exp in experiments:
            if exp.name in existing:
                old = store._entry(exp.name).get("content_hash")
                if old != exp.content_hash:
                    from ndt_store.errors import ExperimentExistsError

                    raise ExperimentExistsError(
                        f"{exp.source}: experiment {exp.name!r} already exists in "
                        f"{store.location!r} with different content; pass overwrite=True "
                        "(CLI: --overwrite) to replace it"
                    )
    result: dict[str, str] = {}
    for exp in _progress(experiments, progress, "writing"):
        result[exp.name] = store.write_experiment(
            exp.name,
            exp.dataset,
            exp.metadata,
            content_hash=exp.content_hash,
            overwrite=overwrite,
        )
    if any(status != "unchanged" for status in result.values()):
        from ndt_store._catalog import rebuild

        rebuild(store)  # keep the cross-experiment view fresh for readers
    return result


def export_phase1_json(store: Store, experiment: str) -> dict[str, Any]:
    """Write an experiment back out in the study's JSON schema (as a dict).

    The result equals the original file's parsed content, value for value.
    """
    ds = store.phase1(experiment)
    meta = store.metadata(experiment)
    out: dict[str, Any] = {}
    arrays = store._phase1_numpy(experiment)
    out["measurements"] = [_export_record(arrays, i) for i in range(arrays[D.STEP].size)]
    for key, value in meta.items():
        if key == D.DATASET:
            out["dataset_name"] = value
        elif key == "extra":
            out.update(value)
        else:
            out[key] = value
    del ds
    return out


def _export_record(arrays: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    metrics = arrays["metrics"][i]
    return {
        D.STEP: int(arrays[D.STEP][i]),
        D.EPOCH: int(arrays[D.EPOCH][i]),
        D.LOSS: float(arrays[D.LOSS][i]),
        D.GRAD_NORM: float(arrays[D.GRAD_NORM][i]),
        "layer_metrics": {
            str(layer): {m: float(metrics[j, k]) for k, m in enumerate(D.PHASE1_METRICS)}
            for j, layer in enumerate(arrays[D.LAYER])
        },
    }


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled or len(items) < 2:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="file", leave=False)
