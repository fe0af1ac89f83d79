"""Charts for the step summary, drawn with matplotlib when it is installed (the `plots` extra).

Charts are optional: without matplotlib the plot functions return None and the run goes on.
Figures are drawn on an explicit Agg canvas (no display, no pyplot global state) with a fixed
size, dpi and no "Software" PNG metadata, so the same record gives a byte-identical PNG.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wanda_export.atomic import atomic_write_bytes
from wanda_export.report.record import RunRecord

if TYPE_CHECKING:
    from wanda_export.allocation import Allocation
    from wanda_export.bench.compare import ComparisonRow
    from wanda_export.report.metrics import TaskAccuracy

FIGSIZE = (12.0, 4.5)
DPI = 100
MAX_NAMED_TICKS = 40
MAX_BLOCK_TICKS = 32
UNIFORM_TOLERANCE = 1e-3  # layers within this sparsity of each other are pruned alike
_BLOCK = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def projection_type(name: str) -> str:
    """The projection a module name ends with: `model.layers.3.self_attn.q_proj` -> `q_proj`."""
    return name.rsplit(".", 1)[-1]


def _block_index(name: str) -> str | None:
    """The first numeric component of a module name (the transformer block), if any."""
    match = _BLOCK.search(name)
    return match.group(1) if match else None


def _short_names(names: list[str]) -> list[str]:
    """Names without the dotted prefix they all share, for readable tick labels."""
    split = [name.split(".") for name in names]
    common = 0
    while all(len(parts) > common + 1 for parts in split) and len({p[common] for p in split}) == 1:
        common += 1
    return [".".join(parts[common:]) for parts in split]


def model_label(record: RunRecord) -> str:
    """The model's public name (hub id or folder name); an older record's folder name."""
    model = record.model or {}
    if model.get("name"):
        return str(model["name"])
    source = str(model.get("source") or "default model")
    return Path(source).name if Path(source).is_absolute() else source  # a hub id stays whole


def _as_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def plot_layer_sparsity(record: RunRecord, path: str | os.PathLike[str]) -> Path | None:
    """Draw per-layer sparsity as bars in model order, colored by projection type, to a PNG.

    A horizontal line marks the planned target sparsity (the measured overall sparsity when
    the record has no plan). Returns the written path, or None when matplotlib is not installed
    or the record has no per-layer sparsity; a missing chart never fails a run.
    """
    sparsity = record.sparsity
    layers = {} if sparsity is None else sparsity.report.layers
    if not layers:
        return None
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter
    except ImportError:
        return None

    names = list(layers)
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    _layer_bars(axes, names, [layers[name].sparsity for name in names], colormaps)

    plan = record.plan or {}
    target = _as_fraction(plan.get("sparsity"))
    label = "target"
    if math.isnan(target):
        target, label = sparsity.report.overall, "overall"
    if not math.isnan(target):
        axes.axhline(
            target, color="black", linestyle="--", linewidth=1.0, label=f"{label} {target * 100:g}%"
        )

    allocation = _plot_allocation(axes, sparsity.allocation, names)
    _set_ticks(axes, names)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylim(0.0, 1.0)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel("sparsity")
    axes.grid(axis="y", linewidth=0.5, alpha=0.5)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    source = model_label(record)
    pattern = plan.get("pattern") or sparsity.pattern or "unstructured"
    title = f"Per-layer sparsity: {source} ({pattern}{allocation})".replace("$", r"\$")
    axes.set_title(title)
    return _save(figure, path)


def _layer_bars(axes: Any, names: list[str], values: list[float], colormaps: Any) -> None:
    """One bar per layer in model order, colored by projection type."""
    kinds = [projection_type(name) for name in names]
    order = list(dict.fromkeys(kinds))
    colors = _colors(order, colormaps["tab10" if len(order) <= 10 else "tab20"])
    positions = list(range(len(names)))
    for kind in order:
        picked = [i for i in positions if kinds[i] == kind]
        axes.bar(picked, [values[i] for i in picked], width=0.85, color=colors[kind], label=kind)


def uniform_sparsity(record: RunRecord) -> bool:
    """Whether every layer has the same sparsity (a uniform run: its sparsity chart would be
    identical bars, so the importance each mask kept is drawn instead)."""
    layers = [] if record.sparsity is None else record.sparsity.report.layers.values()
    values = [layer.sparsity for layer in layers]
    return bool(values) and max(values) - min(values) < UNIFORM_TOLERANCE


def plot_importance_kept(record: RunRecord, path: str | os.PathLike[str]) -> Path | None:
    """Draw each layer's share of importance its mask kept (Wanda |W|·‖X‖, magnitude |W|),
    bars in model order colored by projection, with the median, to a PNG: what tells layers
    apart when all are pruned alike. None without the measurement or without matplotlib."""
    kept = None if record.sparsity is None else record.sparsity.importance_kept
    if not kept:
        return None
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter
    except ImportError:
        return None

    names = list(kept)
    values = [kept[name] for name in names]
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    _layer_bars(axes, names, values, colormaps)
    median = sorted(values)[len(values) // 2]
    axes.axhline(median, color="black", linestyle="--", linewidth=1.0,
                 label=f"median {median * 100:.1f}%")
    _set_ticks(axes, names)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylim(max(0.0, min(values) - 0.05), 1.0)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylabel("importance kept")
    axes.grid(axis="y", linewidth=0.5, alpha=0.5)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    method = (record.plan or {}).get("method", "")
    title = (f"Importance kept per layer: {model_label(record)} ({record.sparsity.pattern}, "
             f"{method} scores)").replace("$", r"\$")
    axes.set_title(title)
    figure.tight_layout()

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return atomic_write_bytes(path, buffer.getvalue())


def _plot_allocation(axes: Any, allocation: Allocation | None, names: list[str]) -> str:
    """Overlay a layer-wise allocation: each layer's allocated ratio as a tick and, when the
    allocation is AlphaPruning's, the ESD alphas on a second axis. Returns a title suffix."""
    if allocation is None or not allocation.ratios or allocation.method == "uniform":
        return ""
    positions = list(range(len(names)))
    ratios = [_as_fraction(allocation.ratios.get(name)) for name in names]
    axes.plot(positions, ratios, linestyle="none", marker="_", markersize=7, color="black",
              label=f"{allocation.method} ratio")
    alphas = [_as_fraction((allocation.alphas or {}).get(name)) for name in names]
    if any(not math.isnan(alpha) for alpha in alphas):
        twin = axes.twinx()
        twin.plot(positions, alphas, color="tab:red", linestyle="none", marker=".",
                  markersize=4, label="ESD alpha (Hill; lower = heavier tail = pruned less)")
        twin.set_ylabel("ESD alpha", color="tab:red", fontsize="small")
        twin.legend(loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize="small",
                    frameon=False)
    return f", {allocation.method} allocation"


def _colors(kinds: list[str], palette: Any) -> dict[str, Any]:
    """One stable color per projection type, in order of first appearance."""
    return {kind: palette(i % palette.N) for i, kind in enumerate(kinds)}


def _set_ticks(axes: Any, names: list[str]) -> None:
    """Name each bar for small models; label transformer blocks for big ones."""
    if len(names) <= MAX_NAMED_TICKS:
        axes.set_xticks(range(len(names)), _short_names(names), rotation=90, fontsize="x-small")
        return
    firsts: dict[str, int] = {}
    for i, name in enumerate(names):
        block = _block_index(name)
        if block is not None:
            firsts.setdefault(block, i)
    if not firsts:
        axes.set_xlabel(f"layer (model order, {len(names)} layers)")
        return
    step = max(1, math.ceil(len(firsts) / MAX_BLOCK_TICKS))
    shown = list(firsts.items())[::step]
    axes.set_xticks([i for _, i in shown], [block for block, _ in shown], fontsize="small")
    axes.set_xlabel(f"transformer block ({len(names)} layers in model order)")


LOG_SCALE_SPREAD = 20.0


def _finish(axes: Any, title: str) -> None:
    """The grid, the legend beside the axes and the title every bar chart here has."""
    axes.grid(axis="y", linewidth=0.5, alpha=0.5)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    axes.set_title(title)


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Lay the figure out and write it as a PNG without "Software" metadata, atomically."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return atomic_write_bytes(path, buffer.getvalue())


def latency_chart(rows: Sequence[ComparisonRow], path: str | os.PathLike[str]) -> Path | None:
    """Draw dense vs sparse p50 latency as a pair of bars per (runtime, shape), to a PNG.

    `rows` are the benchmark's comparison rows (`record.metrics.latency.comparison`); the
    speedup (dense p50 / sparse p50) is written above each pair. The
    axis is logarithmic when latencies span more than LOG_SCALE_SPREAD x, so a decode step
    stays visible next to a large prefill. Returns the written path, or None when matplotlib
    is not installed or there are no rows; a missing chart never fails a run.
    """
    table = list(rows)
    if not table:
        return None
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    dense = [_as_fraction(row.dense_p50_ms) for row in table]
    sparse = [_as_fraction(row.sparse_p50_ms) for row in table]
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    palette = colormaps["tab10"]
    width = 0.38
    positions = range(len(table))
    axes.bar([i - width / 2 for i in positions], dense, width, color=palette(0), label="dense")
    axes.bar([i + width / 2 for i in positions], sparse, width, color=palette(1), label="sparse")
    for i, row in enumerate(table):
        pair = [v for v in (dense[i], sparse[i]) if not math.isnan(v)]
        ratio = _as_fraction(row.speedup)
        text = "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"
        axes.annotate(text, (i, max(pair, default=0.0)), xytext=(0, 3),
                      textcoords="offset points", ha="center", va="bottom", fontsize="small")

    measured = [v for v in dense + sparse if v > 0]
    if measured and max(measured) / min(measured) > LOG_SCALE_SPREAD:
        axes.set_yscale("log")
        axes.set_ylim(min(measured) / 1.5, max(measured) * 2.0)  # room for the speedup labels
    elif measured:
        axes.set_ylim(0.0, max(measured) * 1.15)
    labels = [f"{row.runtime}\n{row.shape}" for row in table]
    axes.set_xticks(list(positions), labels, fontsize="small")
    axes.set_xlim(-0.6, len(table) - 0.4)
    axes.set_ylabel("p50 latency (ms)")
    _finish(axes, "Dense vs sparse latency (p50; speedup = dense / sparse)")
    return _save(figure, path)


def accuracy_chart(scores: dict[str, TaskAccuracy], path: str | os.PathLike[str]) -> Path | None:
    """Draw dense vs pruned score per lm-eval task (bars with one-stderr error bars, recovery
    above each pair), to a PNG. None when matplotlib is missing or nothing was scored."""
    if not scores:
        return None
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    tasks = list(scores)
    figure = Figure(figsize=(max(4.0, 1.6 * len(tasks) + 2.0), FIGSIZE[1]), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    palette = colormaps["tab10"]
    width = 0.38
    positions = range(len(tasks))
    for offset, label, color in ((-width / 2, "dense", palette(0)),
                                 (width / 2, "pruned", palette(1))):
        values = [getattr(scores[task], label) for task in tasks]
        errors = [getattr(scores[task], f"{label}_stderr") or 0.0 for task in tasks]
        axes.bar([i + offset for i in positions], values, width, yerr=errors, capsize=3,
                 color=color, label=label)
    for i, task in enumerate(tasks):
        recovery = scores[task].recovery
        text = "n/a" if recovery is None else f"{recovery:.2f}"
        axes.annotate(text, (i, max(scores[task].dense, scores[task].pruned)), xytext=(0, 8),
                      textcoords="offset points", ha="center", va="bottom", fontsize="small")
    axes.set_xticks(list(positions), [f"{task}\n{scores[task].metric}" for task in tasks],
                    fontsize="small")
    axes.set_ylim(0.0, 1.1 * max(max(s.dense, s.pruned) for s in scores.values()) + 0.05)
    axes.set_ylabel("score")
    _finish(axes, "Dense vs pruned per task (recovery = pruned / dense)")
    return _save(figure, path)
