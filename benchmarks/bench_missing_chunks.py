"""Missing-chunk detection: the store's own check versus zarr's ``read_missing_chunks=False``.

Reads that do not take the whole-chunk fast read (arrays whose codecs are not
bytes [+ Blosc], e.g. zarr's default Zstd) check that every chunk is present
before trusting zarr's result, because zarr fills an absent chunk with the fill
value. zarr >= 3.2 can raise instead (``array.read_missing_chunks = False``).
Paired in one run, on the same arrays (warm page cache):

- ``own check``: :func:`ndt_store._frame.chunk_problems` (one fetch per chunk)
  then ``AsyncArray.getitem`` (zarr fetches again and decodes);
- ``zarr config``: ``getitem`` on the array opened with ``read_missing_chunks=False``
  (one fetch per chunk).

For fast-layout arrays neither is used: the store's own one-fetch read detects a
missing chunk as it fetches it; that read is timed against zarr's as a third row.

Run: ``python benchmarks/bench_missing_chunks.py [--quick]`` (needs zarr >= 3.2 for
the config rows).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.array import AsyncArray
from zarr.core.sync import sync

from ndt_store._frame import _WRITE_ALL, COMPRESSORS, _chunk_keys, _read_region, chunk_problems


def _write(root: Path, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], codecs: Any):
    rng = np.random.default_rng(0)
    arr = zarr.create_array(
        str(root / name), shape=shape, chunks=chunks, dtype="f4", compressors=codecs,
        config=_WRITE_ALL,
    )  # fmt: skip
    arr[...] = rng.normal(size=shape).astype("f4").round(2)
    return arr


def _time(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    if tuple(int(x) for x in zarr.__version__.split(".")[:2]) < (3, 2):
        return []  # nothing to compare: zarr < 3.2 has no read_missing_chunks
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-missing-"))
    repeats = 5 if quick else 15
    try:
        big = 16 if quick else 32
        for label, shape, chunks in (
            ("64 small chunks (4 KiB)", (64, 1024), (1, 1024)),
            (f"{big} chunks of 1 MiB", (big, 256, 1024), (1, 256, 1024)),
        ):
            zst = _write(tmp, f"z{len(rows)}", shape, chunks, (ZstdCodec(level=1),))
            fast = _write(tmp, f"b{len(rows)}", shape, chunks, COMPRESSORS)
            bounds = [(0, None)] * len(shape)

            def own(arr: zarr.Array = zst, bounds: Any = bounds) -> None:
                a = arr._async_array
                assert not sync(chunk_problems(a, _chunk_keys(a, bounds)))
                sync(a.getitem(Ellipsis))

            strict = sync(AsyncArray.open(zst.store_path, config={"read_missing_chunks": False}))  # type: ignore[call-arg]
            strict_fast = sync(
                AsyncArray.open(fast.store_path, config={"read_missing_chunks": False})
            )  # type: ignore[call-arg]

            def config(arr: Any = strict) -> None:
                sync(arr.getitem(Ellipsis))

            def own_fast(arr: zarr.Array = fast, bounds: Any = bounds) -> None:
                sync(_read_region(arr._async_array, bounds))

            def zarr_fast(arr: Any = strict_fast) -> None:
                sync(arr.getitem(Ellipsis))

            for fn in (own, config, own_fast, zarr_fast):  # warm up: page cache, imports
                fn()
            t = {"own": [], "config": [], "own_fast": [], "zarr_fast": []}
            for _ in range(repeats):  # interleaved: both sides see the same machine load
                for key, fn in (("own", own), ("config", config), ("own_fast", own_fast),
                                ("zarr_fast", zarr_fast)):  # fmt: skip
                    t[key] += _time(fn, 1)
            med = {k: statistics.median(v) for k, v in t.items()}
            rows.append({
                "case": f"zstd array, {label}: presence check + zarr read",
                "ndt_store": med["own"], "baseline": med["config"], "unit": "s",
                "baseline_name": f"zarr {zarr.__version__} read_missing_chunks=False",
            })  # fmt: skip
            rows.append({
                "case": f"Blosc array, {label}: the store's one-fetch read",
                "ndt_store": med["own_fast"], "baseline": med["zarr_fast"], "unit": "s",
                "baseline_name": f"zarr {zarr.__version__} read_missing_chunks=False",
            })  # fmt: skip
        # both detect a deleted chunk
        (tmp / "z0" / "c" / "3" / "0").unlink()
        damaged = zarr.open_array(str(tmp / "z0"), config={"read_missing_chunks": False})
        try:
            damaged[...]
            raise AssertionError("zarr read a missing chunk")
        except zarr.errors.ChunkNotFoundError:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"zarr {zarr.__version__}")
    for row in run(args.quick):
        print(
            f"{row['case']}: {row['ndt_store'] * 1e3:.2f} ms vs {row['baseline_name']}"
            f" {row['baseline'] * 1e3:.2f} ms (ratio {row['baseline'] / row['ndt_store']:.2f};"
            " > 1 = the store's way is faster)"
        )
