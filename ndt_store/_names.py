"""Validation of the names that become paths inside a store."""

from __future__ import annotations

import unicodedata

from ndt_store.errors import InvalidNameError

_MAX_LEN = 200
_FORBIDDEN = set('/\\:*?"<>|')


def validate_name(name: object, *, kind: str = "experiment") -> str:
    """Return ``name`` if it is safe to use as one path segment of a store.

    A name must be a non-empty string of printable characters, must not be ``.``
    or ``..``, must not contain a path separator or any of ``:*?"<>|``, must not
    start with ``.`` or ``__`` (reserved for store internals), must not have
    leading/trailing white space and is at most 200 characters long.

    Parameters
    ----------
    name
        The candidate name.
    kind
        What is being named (``"experiment"``, ``"layer"``, ``"parameter"``), for the message.

    Returns
    -------
    str
        ``name`` unchanged.

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
    if name in {".", ".."}:
        raise InvalidNameError(f"{kind} name {name!r} is not allowed: it would escape the store")
    if len(name) > _MAX_LEN:
        raise InvalidNameError(
            f"{kind} name is longer than {_MAX_LEN} characters: {name[:40]!r}..."
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
    return name
