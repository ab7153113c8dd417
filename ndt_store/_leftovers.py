"""Finding the ``*.partial`` files that interrupted writes leave in a local store.

Zarr writes a key through a temporary ``<key>.<uuid>.partial`` file beside it,
renamed over the key when complete; a writer killed in between leaves the
temporary file. Such files are harmless (never read) but take space.

Looking everywhere means listing every directory of the store, and a frame
stores each chunk in a directory chain of its own (``c/<row>/0/0/0/`` for a
5-d tensor): listing them costs about as much as reading every chunk file. So
by default only the directories where a write can have been interrupted without
a later write having finished are listed:

- every group and array directory the metadata describe (``zarr.json`` writes);
- every directory the metadata do not describe (uncommitted experiments,
  frames being written, columns being added): in full;
- each array's chunk directory ``c/``, and in full the chunk directories of rows
  past the committed ones (appends).

The chunk directories of committed rows are listed only by the full search
(``layout=None``): a ``.partial`` there is left by an overwrite of a committed
row that was interrupted, after which the row still reads as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ndt_store._array_spec import ArraySpec

_FULL, _GROUP, _ARRAY, _CHUNKS = range(4)


@dataclass
class Layout:
    """The groups and arrays the metadata walk saw, by store key."""

    groups: set[str] = field(default_factory=lambda: {""})
    arrays: dict[str, int | None] = field(default_factory=dict)
    """Per array: the first row-chunk index holding an uncommitted row, or ``None``
    when its chunk keys are not ``c/<row>/...`` (its directory is listed in full)."""

    def group(self, key: str) -> None:
        """Record the group at ``key`` and the groups above it."""
        while key and key not in self.groups:
            self.groups.add(key)
            key = key.rpartition("/")[0]

    def array(self, spec: ArraySpec, rows: int) -> None:
        """Record an array whose rows ``[0, rows)`` are committed."""
        self.group(spec.path.rpartition("/")[0])
        nested = spec.key_prefix == "c/" and spec.separator == "/" and len(spec.shape) > 0
        self.arrays[spec.path] = rows // spec.chunks[0] if nested else None


def find_partials(root: str, layout: Layout | None) -> list[str]:
    """Paths of the ``*.partial`` files under ``root`` (``.locks`` excluded), sorted.

    ``layout=None`` lists every directory; a :class:`Layout` limits the search as
    the module docstring describes.
    """
    found: list[str] = []
    stack: list[tuple[str, str, int, int | None]] = [(root, "", _GROUP, None)]
    while stack:
        path, key, kind, boundary = stack.pop()
        try:
            entries = os.scandir(path)
        except OSError:
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if name == ".locks":
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    if name.endswith(".partial"):
                        found.append(entry.path)
                    continue
                child = f"{key}/{name}" if key else name
                sub, limit = _FULL, None
                if layout is None or kind == _FULL:
                    pass
                elif kind == _CHUNKS:
                    assert boundary is not None
                    if name.isascii() and name.isdigit() and int(name) < boundary:
                        continue  # a committed row's chunks: the full search only
                elif kind == _ARRAY:
                    limit = layout.arrays[key]
                    if name == "c" and limit is not None:
                        sub = _CHUNKS
                elif child in layout.arrays:
                    sub = _ARRAY
                elif child in layout.groups:
                    sub = _GROUP
                stack.append((entry.path, child, sub, limit))
    return sorted(found)


__all__ = ["Layout", "find_partials"]
