"""``ndt-store quickstart``: the whole workflow on a fresh machine, in minutes, offline.

Trains three small models shaped like the study's (a transformer encoder over
image rows, a CNN and a narrow MLP) on scikit-learn's bundled 8×8 digits (no
download), records them with :class:`~ndt_store.capture.Recorder` into
``OUT/store.zarr`` (Phase 1 metrics every 5 steps, scheduled and jump-triggered
snapshots of weights, probe activations and attention), then runs the Phase 2
workflow (jumps, critical moments, before/after comparisons with weight change,
activation sparsity/selectivity, attention entropy and head specialization)
with :func:`ndt_store.report.write_report` and writes ``OUT/report/``:
``analysis_results.json``, ``comparison_report.md`` and figures (one folder of
figures per model). See ``docs/quickstart.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ndt_store.errors import InputError, require

__all__ = ["MODELS", "QuickstartResult", "build_model", "load_digits_split", "run_quickstart"]

MODELS: tuple[str, ...] = ("transformer_digits", "cnn_digits", "mlp_narrow_digits")
"""Experiment names of the three quickstart runs."""

_ARCH = {
    "transformer_digits": "transformer_small",
    "cnn_digits": "cnn_small",
    "mlp_narrow_digits": "mlp_narrow",
}


def load_digits_split(probe_size: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's 8×8 digits (bundled, no download), scaled to [0, 1] and split.

    Returns ``x_train, y_train, x_test, y_test`` (images ``(n, 8, 8)`` float32) and
    ``x_probe, y_probe``: the first ``probe_size`` test images, the fixed probe batch.

    Examples
    --------
    >>> d = load_digits_split()
    >>> d["x_train"].shape[1:], d["x_probe"].shape
    ((8, 8), (128, 8, 8))
    """
    datasets = require("sklearn.datasets", "test")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_test = 360
    out = {
        "x_train": x[n_test:],
        "y_train": y[n_test:],
        "x_test": x[:n_test],
        "y_test": y[:n_test],
    }
    out["x_probe"] = out["x_test"][:probe_size]
    out["y_probe"] = out["y_test"][:probe_size]
    return out


def build_model(name: str) -> Any:
    """One of the quickstart models (see :data:`MODELS`), layer names as in the study.

    * ``transformer_digits``: the 8 image rows are a sequence of 8 tokens of 8
      pixels; ``input_proj`` (8→32), a learned position embedding, a 2-layer
      ``nn.TransformerEncoder`` (4 heads, feed-forward 64), mean pooling, ``fc``.
    * ``cnn_digits``: ``conv_layers`` (conv 16, ReLU, pool, conv 32, ReLU, pool), ``fc``.
    * ``mlp_narrow_digits``: ``network`` of 5 linear layers of width 32 with ReLU.

    Examples
    --------
    >>> sum(p.numel() for p in build_model("mlp_narrow_digits").parameters())
    5578
    """
    torch = require("torch", "torch")
    nn = torch.nn

    class RowTransformer(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self, d: int = 32, heads: int = 4, depth: int = 2) -> None:
            super().__init__()
            self.input_proj = nn.Linear(8, d)
            self.pos = nn.Parameter(torch.zeros(1, 8, d))
            layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True)
            self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.fc = nn.Linear(d, 10)

        def forward(self, x: Any) -> Any:
            h = self.input_proj(x.reshape(-1, 8, 8)) + self.pos
            return self.fc(self.transformer(h).mean(1))

    class SmallCNN(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv_layers = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )  # fmt: skip
            self.fc = nn.Linear(32 * 2 * 2, 10)

        def forward(self, x: Any) -> Any:
            return self.fc(self.conv_layers(x.reshape(-1, 1, 8, 8)).flatten(1))

    class NarrowMLP(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self, width: int = 32) -> None:
            super().__init__()
            layers: list[Any] = []
            sizes = [64, width, width, width, width]
            for a, b in itertools.pairwise(sizes):
                layers += [nn.Linear(a, b), nn.ReLU()]
            layers.append(nn.Linear(width, 10))
            self.network = nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            return self.network(x.reshape(-1, 64))

    factories: dict[str, Callable[[], Any]] = {
        "transformer_digits": RowTransformer,
        "cnn_digits": SmallCNN,
        "mlp_narrow_digits": NarrowMLP,
    }
    if name not in factories:
        from ndt_store.errors import InputError

        raise InputError(f"unknown quickstart model; choose from {list(factories)}", value=name)
    return factories[name]()


@dataclass
class QuickstartResult:
    """Where :func:`run_quickstart` put everything."""

    out: Path
    store: Path
    report: Path
    files: dict[str, Path] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines saying what was done and where everything is."""
        lines = [f"ndt-store quickstart finished in {sum(self.seconds.values()):.0f} s"]
        for name, acc in self.accuracy.items():
            lines.append(f"  {name:20s} test accuracy {acc:.3f}  ({self.seconds[name]:.0f} s)")
        figures = sorted(p for p in self.files.values() if p.suffix == ".png")
        lines += [
            f"  store:    {self.store}   (open with ndt_store.open_store)",
            f"  results:  {self.report / 'analysis_results.json'}",
            f"  report:   {self.report / 'comparison_report.md'}",
            f"  figures:  {len(figures)} PNG files under {self.report}",
            "Try: ndt-store ls --store " + str(self.store),
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _train_one(
    torch: Any,
    store: Any,
    name: str,
    data: dict[str, np.ndarray],
    *,
    steps: int,
    every: int,
    batch_size: int,
    seed: int,
    progress: bool,
    say: Callable[[str], None],
) -> float:
    from ndt_store.capture import JumpPolicy, Recorder

    if name in store.experiments():
        meta = store.metadata(name)
        complete = meta.get("capture", {}).get("status") == "complete"
        same = meta.get("num_steps") == steps and meta.get("seed", seed) == seed
        if complete and same:
            say(
                f"reusing {name} from {store.location} ({steps} steps, seed {seed}); "
                "pass --fresh (fresh=True) to train it again"
            )
            return float(meta.get("final_accuracy", float("nan")))
        why = (
            f"stored run has {meta.get('num_steps')} steps / seed {meta.get('seed')}, asked "
            f"{steps} / {seed}"
            if complete
            else "stored run was interrupted"
        )
        say(f"training {name} again: {why}")
        store.delete_experiment(name)  # the model state is gone, redo it
    say(f"training {name} ({steps} steps)")
    torch.manual_seed(seed)
    model = build_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_train = torch.from_numpy(data["x_train"])
    y_train = torch.from_numpy(data["y_train"])
    probe = (torch.from_numpy(data["x_probe"]), torch.from_numpy(data["y_probe"]))
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(1, len(y_train) // batch_size)
    snapshot_every = max(every, (steps // 6) // every * every)
    bar = _progress(steps, name, progress)
    with Recorder(
        store,
        name,
        model,
        probe=probe,
        every=every,
        metric_samples=64,
        tokens=False,  # the study measured whole sequences (sample x (row * feature))
        # step 1 rather than 0: a jump at record 0 makes a before/during moment pair
        # at step 0 on both sides, which ndt_store.compare cannot compare yet
        snapshot_steps=[1, *range(snapshot_every, steps - 1, snapshot_every), steps - 1],
        jump_snapshots=JumpPolicy(window=20, before=1, after=2, max_count=9),
        arch_name=_ARCH[name],
        dataset="digits",
        total_steps=steps,
        seed=seed,
        metadata={"batch_size": batch_size, "optimizer": "Adam(lr=2e-3)"},
    ) as rec:
        if bar is not None:
            bar.write(f"  {rec.describe_estimate()}")
        order = torch.randperm(len(y_train), generator=gen)
        for step in range(rec.start_step, steps):
            k = step % per_epoch
            if k == 0 and step:
                order = torch.randperm(len(y_train), generator=gen)
            idx = order[k * batch_size : (k + 1) * batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            rec.step(step, loss=loss, epoch=1 + step // per_epoch)
            opt.zero_grad()
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        with torch.no_grad():
            pred = model(torch.from_numpy(data["x_test"])).argmax(-1).numpy()
        accuracy = float(np.mean(pred == data["y_test"]))
        rec.set_result(final_accuracy=accuracy)
    if bar is not None:
        bar.close()
    return accuracy


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{desc:20s}", unit="step", leave=True)


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)]+)\)")


def _prefix_links(markdown: str, folder: str) -> str:
    """Make relative links of a per-run report point into its sub-folder."""

    def fix(m: re.Match[str]) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:|^/|^#", target):
            return m.group(0)
        return f"{m.group(1)}{folder}/{target})"

    return _LINK.sub(fix, markdown)


_ANCHOR_LINK = re.compile(r"\]\(#([^)]+)\)")
_ANCHOR_ID = re.compile(r'<a id="([^"]+)"></a>')


def _prefix_anchors(markdown: str, run: str) -> str:
    """Anchors and links to them made unique per run (``#moment-1`` → ``#run-moment-1``)."""
    markdown = _ANCHOR_LINK.sub(lambda m: f"](#{run}-{m.group(1)})", markdown)
    return _ANCHOR_ID.sub(lambda m: f'<a id="{run}-{m.group(1)}"></a>', markdown)


def _split_report(markdown: str) -> tuple[list[str], str, str]:
    """A run's report as (first lines without its title, summary body, details)."""
    head, _, rest = markdown.partition("<!-- summary -->")
    summary, _, details = rest.partition("<!-- /summary -->")
    first = [line for line in head.splitlines()[1:] if line.strip()]
    first = [x for line in first for x in (line, "")]  # a blank line after each
    body = re.sub(r"^<a id=\"[^\"]+\"></a>\s*## Summary\s*", "", summary.strip())
    return first, body, details


def _combined_report(report: Path, runs: dict[str, dict[str, Path]]) -> dict[str, Path]:
    """One report of every run: all the summaries first, then each run's details."""
    results: dict[str, Any] = {"experiments": {}}
    parts = [
        "# ndt-store quickstart: before/after comparison report",
        "",
        "Three small models trained on scikit-learn's 8×8 digits and recorded with the "
        "Recorder. Summaries of every run first, then the details per run (each run's own "
        "report and figures are in the sub-folder of the same name).",
        "",
        "## Summaries",
        "",
    ]
    details: list[str] = ["## Details", ""]
    for name, files in runs.items():
        results["experiments"][name] = json.loads(
            files["analysis_results.json"].read_text(encoding="utf-8")
        )
        md = files["comparison_report.md"].read_text(encoding="utf-8")
        md = _prefix_links(_prefix_anchors(md, name), name)
        first, summary, rest = _split_report(md)
        parts += [f"### {name}", "", *first, summary, ""]
        rest = re.sub(r"^(#+) ", r"##\1 ", rest.strip(), flags=re.MULTILINE)  # nest headings
        details += [f'<a id="{name}"></a>', "", f"### {name}", "", rest, ""]
    parts += details
    out = {
        "comparison_report.md": report / "comparison_report.md",
        "analysis_results.json": report / "analysis_results.json",
    }
    tmp = report / ".comparison_report.md.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, out["comparison_report.md"])
    tmp = report / ".analysis_results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, out["analysis_results.json"])
    return out


def run_quickstart(
    out: str | os.PathLike[str] = "ndt_quickstart",
    *,
    steps: int = 600,
    every: int = 5,
    batch_size: int = 64,
    seed: int = 0,
    models: tuple[str, ...] = MODELS,
    threads: int | None = None,
    progress: bool = True,
    fresh: bool = False,
    alpha: float = 0.05,
    metric: str = "stable_rank",
    on_stage: Callable[[str], None] | None = None,
) -> QuickstartResult:
    """Train, record and analyse the three quickstart models; write the report.

    Parameters
    ----------
    out
        Output directory (created; must not be a file): ``store.zarr`` and
        ``report/`` are written inside. A store already there is reused: complete
        runs with the same ``steps`` and ``seed`` are kept (and re-analysed; a
        message says so), other and interrupted ones are trained again.
    steps
        Training steps per model.
    every
        Phase 1 measurement interval.
    batch_size, seed
        Training batch size and seed (data order and initialisation).
    models
        Which of :data:`MODELS` to run.
    threads
        torch intra-op threads (default 1: these models are too small to gain from
        more, and on a busy 2-core machine two threads were 50× slower).
    progress
        Show progress bars.
    fresh
        Train every model again even when a complete run is stored.
    alpha, metric
        Significance level and Phase 1 metric of the reports (see
        :func:`ndt_store.report.write_report`).
    on_stage
        Called with a line for each stage (training, reusing, analysing a run);
        default: print it when ``progress`` is on.

    Returns
    -------
    QuickstartResult
        Paths, test accuracies and timings; ``.summary()`` describes them.

    Examples
    --------
    >>> import tempfile
    >>> res = run_quickstart(tempfile.mkdtemp(), steps=40, models=("mlp_narrow_digits",),
    ...                      progress=False)  # doctest: +SKIP
    >>> (res.report / "analysis_results.json").exists()  # doctest: +SKIP
    True
    """
    torch = require("torch", "torch")
    import ndt_store
    from ndt_store.measures.dynamics import DegenerateMetricWarning, check_alpha
    from ndt_store.report import write_report

    check_alpha(alpha)
    say = on_stage or ((lambda line: print(line, flush=True)) if progress else (lambda _: None))
    out_dir = Path(out)
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"{str(folder)!r} is a file, not a folder", field="out")
            break
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report"
    report.mkdir(exist_ok=True)
    result = QuickstartResult(out_dir, out_dir / "store.zarr", report)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        data = load_digits_split(seed=seed)
        store = ndt_store.open_store(result.store)
        for name in models:
            if fresh and name in store.experiments():
                store.delete_experiment(name)
            t0 = time.perf_counter()
            result.accuracy[name] = _train_one(
                torch, store, name, data, steps=steps, every=every,
                batch_size=batch_size, seed=seed, progress=progress, say=say,
            )  # fmt: skip
            result.seconds[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.refresh()
        runs = {}
        for name in models:
            say(f"analysing {name}")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DegenerateMetricWarning)
                runs[name] = write_report(
                    store, name, report / name, num_jumps=3, offset=10, alpha=alpha,
                    metric=metric,
                )  # fmt: skip
            result.warnings += [str(w.message) for w in caught]
            result.files.update({f"{name}/{k}": v for k, v in runs[name].items()})
        result.files.update(_combined_report(report, runs))
        result.seconds["analysis"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
    return result
