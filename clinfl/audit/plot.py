"""The cumulative-epsilon plot, as PNG bytes (matplotlib's Agg backend, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def png_bytes(figure: Figure) -> bytes:
    """Return ``figure``, laid out tightly, as PNG bytes (the caller closes it)."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def epsilon_figure(
    series: Sequence[tuple[str, Sequence[float]]], *, budget: float | None, title: str
) -> Figure:
    """Return the cumulative-epsilon figure (the caller closes it); see :func:`epsilon_plot`.

    The round axis has whole-number ticks only: rounds are counted, never fractional.
    """
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        _draw(axes, series, budget=budget, title=title)
    except Exception:
        plt.close(figure)
        raise
    return figure


def _draw(
    axes: Axes,
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    budget: float | None,
    title: str,
) -> None:
    for label, values in series:
        axes.plot(range(1, len(values) + 1), values, marker="o", label=label)
    if budget is not None:
        axes.axhline(budget, color="tab:red", linestyle="--", label=f"budget {budget:g}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trained round (in ledger order)")
    axes.set_ylabel("cumulative epsilon")
    axes.set_title(title)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    if series or budget is not None:
        axes.legend(loc="upper left", fontsize="small")


def epsilon_plot(
    series: Sequence[tuple[str, Sequence[float]]], *, budget: float | None, title: str
) -> bytes:
    """Return a PNG of cumulative epsilon per trained round, one line per series, with the budget.

    ``series`` holds ``(label, cumulative epsilons in round order)``.
    """
    figure = epsilon_figure(series, budget=budget, title=title)
    try:
        return png_bytes(figure)
    finally:
        plt.close(figure)
