"""Validation of the names that become paths inside a store.

Names are compared and stored in Unicode normal form C (NFC): ``"café"`` typed
with a combining accent (NFD) and with a precomposed ``é`` name the same
experiment. A name is at most :data:`MAX_NAME_BYTES` bytes in UTF-8, so that it
fits one path segment on every common file system together with the writer
lock's file name (``<name>.lock``, ``table-<name>.lock``).
"""

from __future__ import annotations

import unicodedata

from ndt_store.errors import InvalidNameError

MAX_NAME_BYTES = 200
"""Longest name, in UTF-8 bytes (file systems allow 255 per path segment)."""

RESERVED_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata", "c"})
"""Names Zarr gives meaning to inside a group or array (compared case-insensitively)."""

_FORBIDDEN = set('/\\:*?"<>|')


def normalize_name(name: str) -> str:
    """``name`` in Unicode normal form C (other objects are returned unchanged).

    Examples
    --------
    >>> normalize_name("cafe\\u0301") == "caf\\u00e9"
    True
    """
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def validate_name(name: object, *, kind: str = "experiment", path: bool = True) -> str:
    """Return ``name`` in NFC if it is safe to use as one path segment of a store.

    A name must be a non-empty string of printable characters, must not be ``.``
    or ``..``, must not contain a path separator or any of ``:*?"<>|``, must not
    start with ``.`` or ``__`` (reserved for store internals), must not have
    leading/trailing white space and is at most :data:`MAX_NAME_BYTES` bytes in
    UTF-8. Names that become paths (``path=True``: experiments, tables, snapshot
    parameters and layers) must also not be one of :data:`RESERVED_NAMES`.

    Parameters
    ----------
    name
        The candidate name.
    kind
        What is being named (``"experiment"``, ``"layer"``, ``"parameter"``), for the message.
    path
        Whether the name becomes a path segment (Phase 1 layer names are stored
        as values and may be Zarr's reserved names).

    Returns
    -------
    str
        ``name`` in Unicode normal form C.

    Raises
    ------
    InvalidNameError
        If the name could escape the store or is otherwise unusable.

    Examples
    --------
    >>> validate_name("cnn_deep_mnist")
    'cnn_deep_mnist'
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} name must be a string (got {name!r})")
    if not name:
        raise InvalidNameError(f"{kind} name must not be empty")
    name = normalize_name(name)
    if name in {".", ".."}:
        raise InvalidNameError(f"{kind} name {name!r} is not allowed: it would escape the store")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise InvalidNameError(
            f"{kind} name is {size} bytes long in UTF-8, more than the limit of "
            f"{MAX_NAME_BYTES}: {name[:40]!r}..."
        )
    bad = sorted({c for c in name if c in _FORBIDDEN})
    if bad:
        raise InvalidNameError(
            f"{kind} name {name!r} contains {''.join(bad)!r}: path separators and "
            f"':*?\"<>|' are not allowed"
        )
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidNameError(f"{kind} name {name!r} contains control characters")
    if name.startswith((".", "__")):
        raise InvalidNameError(
            f"{kind} name {name!r} must not start with '.' or '__' (reserved for the store)"
        )
    if name != name.strip():
        raise InvalidNameError(f"{kind} name {name!r} has leading or trailing white space")
    if path and name.lower() in RESERVED_NAMES:
        raise InvalidNameError(
            f"{kind} name {name!r} is reserved by the Zarr format "
            f"({', '.join(sorted(RESERVED_NAMES))}); rename it"
        )
    return name
