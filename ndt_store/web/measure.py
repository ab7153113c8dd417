"""Count what the web views read from a local store (for the laziness tests and benchmark)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reads", "count_store_reads"]


@dataclass
class Reads:
    """Keys and bytes read from local Zarr stores while counting."""

    keys: list[str] = field(default_factory=list)
    nbytes: int = 0

    def add(self, key: str, buf: Any) -> None:
        self.keys.append(key)
        if buf is not None:
            self.nbytes += len(buf)


@contextlib.contextmanager
def count_store_reads() -> Iterator[Reads]:
    """Count every read of a ``zarr.storage.LocalStore`` inside the block (all threads).

    Examples
    --------
    >>> import tempfile, ndt_store
    >>> store = ndt_store.synth_store(tempfile.mkdtemp() + "/s.zarr", experiments=2,
    ...                               steps=0, records=10)
    >>> store.refresh()
    >>> with count_store_reads() as reads:
    ...     _ = store.experiments()
    >>> sorted(k.rsplit("/", 1)[-1] for k in reads.keys)
    ['zarr.json', 'zarr.json']
    """
    from zarr.storage import LocalStore

    reads = Reads()
    get, partial = LocalStore.get, LocalStore.get_partial_values

    async def counted_get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        buf = await get(self, key, *args, **kwargs)
        reads.add(key, buf)
        return buf

    async def counted_partial(self: Any, prototype: Any, key_ranges: Any) -> Any:
        key_ranges = list(key_ranges)
        bufs = await partial(self, prototype, key_ranges)
        for (key, _), buf in zip(key_ranges, bufs, strict=True):
            reads.add(key, buf)
        return bufs

    LocalStore.get = counted_get  # type: ignore[method-assign]
    LocalStore.get_partial_values = counted_partial  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        LocalStore.get = get  # type: ignore[method-assign]
        LocalStore.get_partial_values = partial  # type: ignore[method-assign]
