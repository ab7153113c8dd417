"""Figure creation, saving and label helpers shared by the plot modules.

Figures are built as :class:`matplotlib.figure.Figure` objects, never through
``pyplot``: nothing is registered in a global figure manager, so nothing has to be
closed and no display is needed. A figure is garbage once the caller drops it.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ndt_store.errors import InputError

DEFAULT_DPI = 100
"""Resolution of saved raster images (pixels per inch)."""

MAX_TICKS = 30
"""Most tick labels drawn on a categorical axis; longer axes are thinned evenly."""

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpg", ".jpeg": "jpg"}

PathLike = str | Path


def new_figure(
    figsize: tuple[float, float], *, nrows: int = 1, ncols: int = 1, **subplot_kw: Any
) -> tuple[Figure, np.ndarray]:
    """Create a pyplot-free figure with a ``nrows`` × ``ncols`` grid of axes.

    Parameters
    ----------
    figsize
        Width and height in inches.
    nrows, ncols
        Grid of axes.
    **subplot_kw
        Passed to :meth:`Figure.subplots` (``sharex``, ``sharey``...).

    Returns
    -------
    (Figure, numpy.ndarray of Axes)
        The axes array always has shape ``(nrows, ncols)``.

    Examples
    --------
    >>> fig, axes = new_figure((4, 3), nrows=1, ncols=2)
    >>> axes.shape
    (1, 2)
    """
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def finish(fig: Figure, path: PathLike | None, *, dpi: int = DEFAULT_DPI) -> Figure:
    """Save ``fig`` to ``path`` when one is given, and return it.

    The format follows the extension (``.png``, ``.svg``, ``.pdf``, ``.jpg``);
    a path without an extension is written as PNG. Parent folders are created.

    Examples
    --------
    >>> import tempfile, os
    >>> fig, _ = new_figure((2, 2))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = finish(fig, os.path.join(d, "a.svg"))
    ...     os.path.exists(os.path.join(d, "a.svg"))
    True
    """
    if path is None:
        return fig
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix and suffix not in _FORMATS:
        raise InputError(
            f"cannot choose an image format from the extension {suffix!r}; "
            f"use one of {sorted(_FORMATS)}",
            field="path",
            value=str(path),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=_FORMATS.get(suffix, "png"), dpi=dpi)
    return fig


def as_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU.

    torch is never imported here: a tensor can only exist once torch is loaded, so
    the check looks torch up in :data:`sys.modules`.

    Examples
    --------
    >>> as_numpy([1, 2]).tolist()
    [1, 2]
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    if isinstance(x, xr.DataArray):
        return np.asarray(x.values)
    return np.asarray(x)


def as_dataarray(x: Any, dims: Sequence[Hashable], *, what: str) -> xr.DataArray:
    """Wrap a numpy array or torch tensor in a DataArray with default ``dims``.

    A DataArray passes through unchanged. Raw arrays must have ``len(dims)``
    dimensions; ``what`` names the argument in the error message.

    Examples
    --------
    >>> as_dataarray(np.zeros((2, 3)), ("sample", "feature"), what="act").dims
    ('sample', 'feature')
    """
    if isinstance(x, xr.DataArray):
        return x
    if isinstance(x, xr.Dataset):
        raise InputError(f"{what} must be a DataArray, not a Dataset", field=what)
    arr = as_numpy(x)
    if arr.ndim != len(dims):
        raise InputError(
            f"{what} must have {len(dims)} dimensions {tuple(dims)}, got shape {arr.shape}",
            field=what,
        )
    return xr.DataArray(arr, dims=tuple(dims))


def require_dims(
    da: xr.DataArray, required: Sequence[Hashable], *, what: str, optional: Sequence[Hashable] = ()
) -> None:
    """Raise :class:`InputError` unless ``da`` has all ``required`` and no unknown dims."""
    missing = [d for d in required if d not in da.dims]
    extra = [d for d in da.dims if d not in required and d not in optional]
    if missing or extra:
        allowed = tuple(required) + tuple(f"[{d}]" for d in optional)
        hint = " (select them with .sel/.isel first)" if extra else ""
        raise InputError(
            f"{what} must have dims {allowed}; missing {missing}, unexpected {extra}{hint}",
            field=what,
            value=da.dims,
        )


def fmt(value: Any) -> str:
    """Format one coordinate value for a label (``0.5`` not ``0.5000001``, no ``np.int64``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def labels_of(da: xr.DataArray | xr.Dataset, dim: Hashable) -> list[str]:
    """Tick labels for ``dim``: its coordinate values, or positions when it has none."""
    if dim in da.coords:
        return [fmt(v) for v in np.asarray(da[dim].values)]
    return [str(i) for i in range(da.sizes[dim])]


def scalar_coords(da: xr.DataArray) -> str:
    """Describe the scalar coordinates of ``da`` (``"step = 100, layer = fc"``) for a title."""
    parts = [f"{name} = {fmt(c.values[()])}" for name, c in da.coords.items() if c.ndim == 0]
    return ", ".join(parts)


def with_context(title: str, da: xr.DataArray) -> str:
    """Append the scalar-coordinate description of ``da`` to ``title`` when there is one."""
    ctx = scalar_coords(da)
    return f"{title} ({ctx})" if ctx else title


def set_ticks(ax: Axes, axis: str, labels: Sequence[str], *, max_ticks: int = MAX_TICKS) -> None:
    """Put ``labels`` at integer positions ``0..n-1`` on ``axis`` (``"x"`` or ``"y"``).

    Long axes are thinned to at most ``max_ticks`` evenly spaced labels.
    """
    n = len(labels)
    stride = max(1, int(np.ceil(n / max_ticks)))
    pos = np.arange(0, n, stride)
    shown = [labels[int(i)] for i in pos]
    if axis == "x":
        ax.set_xticks(pos, shown, rotation=90 if max(map(len, shown), default=0) > 3 else 0)
    else:
        ax.set_yticks(pos, shown)


def edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around (possibly unevenly spaced) numeric ``centres`` for ``pcolormesh``.

    Examples
    --------
    >>> edges(np.array([0.0, 10.0, 20.0])).tolist()
    [-5.0, 5.0, 15.0, 25.0]
    """
    c = np.asarray(centres, dtype=float)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def numeric_coord(da: xr.DataArray, dim: Hashable) -> np.ndarray:
    """Values of ``dim`` as floats when numeric, else positions ``0..n-1``."""
    if dim in da.coords:
        v = np.asarray(da[dim].values)
        if np.issubdtype(v.dtype, np.number):
            return v.astype(float)
    return np.arange(da.sizes[dim], dtype=float)


# --- one labelling / colour / legend policy for every figure ------------------------
LABEL_CHARS = 28
"""Longest tick label drawn; longer names are shortened (see :func:`shorten_labels`)."""


def _abbreviations(words: Sequence[str]) -> dict[str, str]:
    """Shortest unique prefix (at least one letter) of each word."""
    out: dict[str, str] = {}
    unique = sorted(set(words))
    for w in unique:
        for n in range(1, len(w) + 1):
            if sum(o.startswith(w[:n]) for o in unique) == 1 or n == len(w):
                out[w] = w[:n]
                break
    return out


def shorten_labels(names: Sequence[str], *, max_chars: int = LABEL_CHARS) -> tuple[list[str], str]:
    """Short, unique tick labels for long names, and the key that explains them.

    Names that all fit in ``max_chars`` are kept. Otherwise the dotted prefix
    every name shares is dropped, then in names still too long every dotted
    part but the last two is abbreviated (numbers are kept, so layer indices
    stay readable: ``layers.10.self_attn.in_proj_weight`` becomes
    ``l.10.self_attn.in_proj_weight``), and a name still too long keeps its
    start and end around ``…``. The key says what was dropped and what each
    abbreviation stands for (empty when nothing was shortened).

    Examples
    --------
    >>> shorten_labels(["model.encoder.fc.weight", "model.encoder.fc.bias"], max_chars=12)
    (['weight', 'bias'], "names without the common prefix 'model.encoder.fc.'")
    """
    names = [str(n) for n in names]
    if all(len(n) <= max_chars for n in names):
        return names, ""
    parts = [n.split(".") for n in names]
    common = 0
    if len(names) > 1:
        while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
            common += 1
    prefix = ".".join(parts[0][:common]) + "." if common else ""
    parts = [p[common:] for p in parts]
    long_words = [w for p in parts if len(".".join(p)) > max_chars for w in p[:-1]]
    abbrev = _abbreviations([w for w in long_words if not w.isdigit()])
    used: dict[str, str] = {}
    out = []
    for p in parts:
        s = ".".join(p)
        for tail in (2, 1):  # abbreviate all but the last two parts, then all but the last
            if len(s) <= max_chars or len(p) <= tail:
                continue
            head = [w if w.isdigit() else abbrev[w] for w in p[:-tail]]
            used.update({abbrev[w]: w for w in p[:-tail] if not w.isdigit() and abbrev[w] != w})
            s = ".".join([*head, *p[-tail:]])
        if len(s) > max_chars:
            keep = (max_chars - 1) // 2
            s = s[:keep] + "…" + s[-(max_chars - 1 - keep) :]
        out.append(s)
    if len(set(out)) < len(out):  # shortening merged names: number them
        out = [f"{s} #{k}" for k, s in enumerate(out)]
    key = []
    if prefix:
        key.append(f"names without the common prefix {prefix!r}")
    if used:
        key.append(", ".join(f"{a} = {w}" for a, w in sorted(used.items())))
    if any("…" in s for s in out):
        key.append("… marks a shortened name")
    return out, "; ".join(key)


def series_colors(n: int, *, ordered: bool) -> list[Any]:
    """``n`` distinct colours: a sequential colormap for ordered series, else a qualitative set.

    Ordered series (steps, intervals) get evenly spaced colours of ``viridis``
    (light = late); unordered ones (heads, layers) get ``tab10`` up to 10,
    ``tab20`` up to 20 and evenly spaced hues of ``turbo`` beyond, so no two
    series ever share a colour.

    Examples
    --------
    >>> len({tuple(c) for c in series_colors(25, ordered=False)})
    25
    """
    from matplotlib import colormaps

    if n <= 0:
        return []
    if ordered:
        return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, n)]
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def legend_outside(ax: Axes, *, handles: Sequence[Any] | None = None) -> None:
    """The legend of ``ax`` to the right of its plotting area (never over the data or title).

    The figure's constrained layout makes room for it, so it stays inside the
    figure; long legends get more columns.
    """
    if handles is None:
        handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return
    ncols = 1 if len(handles) <= 12 else 2
    ax.legend(
        handles=list(handles), loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
        fontsize=8, ncols=ncols,
    )  # fmt: skip


def readability_problems(fig: Figure) -> list[str]:
    """What makes a figure hard to read at its real size (empty list: nothing found).

    Checks, after drawing: every axes and its labels lie inside the figure; no
    text of one axes (tick labels, axis labels, titles) overlaps the plotting
    area of another; legends lie inside the figure and outside every plotting
    area they do not belong to; within one axes no two lines share a colour.

    Examples
    --------
    >>> fig, axes = new_figure((3, 2))
    >>> _ = axes[0, 0].plot([0, 1], label="a")
    >>> readability_problems(fig)
    []
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba

    FigureCanvasAgg(fig)
    import warnings

    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.draw(renderer)
    page = fig.bbox.expanded(1.0, 1.0)
    tol = 2.0  # pixels
    problems: list[str] = [
        f"layout failed: {w.message}" for w in caught if "constrained_layout" in str(w.message)
    ]

    def inside(b: Any) -> bool:
        return (
            b.x0 >= page.x0 - tol
            and b.y0 >= page.y0 - tol
            and b.x1 <= page.x1 + tol
            and b.y1 <= page.y1 + tol
        )

    def overlap(a: Any, b: Any) -> bool:
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        return w > tol and h > tol

    axes = [ax for ax in fig.axes if ax.get_visible()]
    areas = [ax.get_window_extent(renderer) for ax in axes]
    for k, ax in enumerate(axes):
        name = ax.get_title() or ax.get_label() or f"axes {k}"
        box = ax.get_tightbbox(renderer)
        if box is not None and not inside(box):
            problems.append(f"{name!r}: axes or its labels reach outside the figure")
        texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label]
        texts += [
            ax.title,
            getattr(ax, "_left_title", ax.title),
            getattr(ax, "_right_title", ax.title),
        ]
        for text in texts:
            if not text.get_visible() or not text.get_text():
                continue
            tb = text.get_window_extent(renderer)
            for j, other in enumerate(areas):
                if j != k and overlap(tb, other):
                    problems.append(f"{name!r}: text {text.get_text()!r} overlaps another axes")
        colours = [
            tuple(np.round(to_rgba(line.get_color()), 3))
            for line in ax.get_lines()
            if not str(line.get_label()).startswith("_")
        ]
        if len(set(colours)) < len(colours):
            problems.append(f"{name!r}: two labelled lines share a colour")
    legends = [lg for lg in [*fig.legends, *(ax.get_legend() for ax in axes)] if lg is not None]
    for lg in legends:
        lb = lg.get_window_extent(renderer)
        if not inside(lb):
            problems.append("a legend reaches outside the figure")
        for k, area in enumerate(areas):
            if overlap(lb, area):
                problems.append(f"a legend covers the plotting area of axes {k}")
    return problems
