"""`--save DIR`: the report as DIR/benchmark.md, and DIR/benchmark.png, the served items/s against the
single-item requests in flight beside the model-only rate: how close serving gets to the model's limit,
and at how many concurrent users."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clip_server.benchmark import BATCH
from clip_server.benchmark.measure import CurvePoint, Rate, Row
from clip_server.types import require

if TYPE_CHECKING:  # matplotlib is optional: imported where a plot is drawn
    from matplotlib.axes import Axes

MARKDOWN, PLOT = 'benchmark.md', 'benchmark.png'
FIGURE_INCHES, DPI = (11.0, 4.5), 100  # 1100x450 pixels: two panels side by side


def require_plotting() -> None:
    """Fail at once, naming the extra, rather than after minutes of measuring."""
    require('matplotlib', 'test')


def save(folder: Path, report: str, curve: Sequence[CurvePoint], model_only: Row, title: str) -> list[Path]:
    """Write the report and the plot into `folder` (made if missing); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown, plot = folder / MARKDOWN, folder / PLOT
    markdown.write_text(report + '\n', encoding='utf-8')
    plot_curve(plot, curve, model_only, title)
    return [markdown, plot]


def plot_curve(path: Path, curve: Sequence[CurvePoint], model_only: Row, title: str) -> None:
    """Two panels, texts and images: the served rate at each level in flight, the model-only rate dashed."""
    require_plotting()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout='constrained')
    FigureCanvasAgg(figure)  # Agg draws without a display, and without pyplot's global state
    levels = [point.in_flight for point in curve]
    panels = (
        ('texts', [point.texts for point in curve], model_only.texts),
        ('images', [point.images for point in curve], model_only.images),
    )
    for axes, (kind, served, limit) in zip(figure.subplots(1, 2), panels, strict=True):
        _panel(axes, kind, levels, served, limit)
    figure.suptitle(title, fontsize='medium')
    figure.savefig(path, format='png')


def _panel(axes: Axes, kind: str, levels: list[int], served: list[Rate], limit: Rate | None) -> None:
    rates = [rate.per_second for rate in served]
    axes.plot(levels, rates, marker='o', label='server, single-item requests')
    if limit is not None:
        axes.axhline(limit.per_second, linestyle='--', color='grey', label=f'model only, batch {BATCH}')
        rates.append(limit.per_second)
    if levels:
        axes.set_xscale('log', base=2)
        axes.set_xticks(levels, [str(level) for level in levels])
    axes.set_ylim(0, 1.15 * max(rates, default=1.0) or 1.0)  # room above the highest line
    axes.set(title=kind, xlabel='requests in flight (one async client)', ylabel=f'{kind}/s')
    axes.grid(alpha=0.3)
    axes.legend(loc='best')
