"""The report's plots, drawn with matplotlib's Agg backend into PNG bytes. No file I/O.

Each plot shows all attempts (one colour each) with dashed lines where an attempt began, so a reader
sees which steps were recomputed after a failure. A series with no points gives a "no data" panel
rather than a missing image, so the page always has the same plots.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)

from ops.report import Report  # noqa: E402

TITLES = {
    "reward": "Reward mean per step",
    "accuracy": "Validation accuracy per step",
    "step_time": "Step time per step",
    "memory": "Memory per attempt",
    "goodput": "Where the wall time went (goodput)",
}
_UNITS = {"reward": "reward mean", "accuracy": "accuracy", "step_time": "seconds"}


def render_plots(report: Report, dpi: int = 100) -> dict[str, bytes]:
    """name -> PNG bytes, for every name in TITLES."""
    out = {name: _step_plot(report, name) for name in ("reward", "accuracy", "step_time")}
    out["memory"] = _memory_plot(report)
    out["goodput"] = _goodput_plot(report)
    return {name: _png(fig, dpi) for name, fig in out.items()}


def attempt_colour(attempt: int) -> str:
    """The same colour for an attempt in every plot (matplotlib's C0, C1, ... by attempt number)."""
    return f"C{(int(attempt) - 1) % 10}"


def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _step_plot(report: Report, name: str):
    fig, ax = plt.subplots(figsize=(5.3, 3.0))
    per_attempt = report.series.get(name, {})
    for attempt, points in per_attempt.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=f"attempt {attempt}",
                    color=attempt_colour(attempt))
    _boundaries(ax, report)
    _finish(ax, TITLES[name], "step", _UNITS[name], bool(per_attempt))
    return fig


def _memory_plot(report: Report):
    fig, (ax_bar, ax_line) = plt.subplots(1, 2, figsize=(5.6, 3.0), gridspec_kw={"width_ratios": [1, 2]})
    attempts = [a.attempt for a in report.attempts]
    rss = [a.peak_rss_mib or 0 for a in report.attempts]
    gpu = [a.peak_gpu_mib or 0 for a in report.attempts]
    width = 0.38
    ax_bar.bar([x - width / 2 for x in range(len(attempts))], rss, width, label="peak host RSS")
    if any(gpu):
        ax_bar.bar([x + width / 2 for x in range(len(attempts))], gpu, width, label="peak GPU")
    ax_bar.set_xticks(range(len(attempts)), [f"#{a}" for a in attempts])
    ax_bar.set_ylim(0, max(rss + gpu + [1.0]) * 1.3)      # room for the legend above the bars
    ax_bar.set_ylabel("MiB")
    ax_bar.set_xlabel("attempt")
    if attempts:
        ax_bar.legend(fontsize=6, loc="upper left")
    ax_bar.grid(axis="y", alpha=0.3)
    for attempt, points in report.series.get("memory", {}).items():
        if points:
            xs, ys = zip(*points)
            ax_line.plot(xs, ys, linewidth=1.5, label=f"attempt {attempt}", color=attempt_colour(attempt))
    _boundaries(ax_line, report)
    _finish(ax_line, "", "step", "peak MiB", bool(report.series.get("memory")))
    fig.suptitle(TITLES["memory"])
    return fig


def _goodput_plot(report: Report):
    fig, ax = plt.subplots(figsize=(8, 1.5))
    g = report.goodput
    parts = [("productive", g.get("productive_s") or 0.0)] + [(k, v) for k, v in g.get("lost_s", {}).items()]
    left = 0.0
    colours = ["#2ca02c", "#9467bd", "#ff7f0e", "#d62728", "#8c564b", "#1f77b4", "#7f7f7f"]
    for (label, value), colour in zip(parts, colours):
        if value > 0:
            ax.barh([0], [value], left=left, color=colour, label=f"{label} {value:.0f} s")
            left += value
    ax.set_yticks([])
    ax.set_xlabel("seconds of wall time")
    ratio = g.get("goodput")
    title = TITLES["goodput"] + (f": {ratio:.1%}" if ratio is not None else "")
    ax.set_title(title)
    if left:
        ax.legend(ncol=4, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45))
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig


def _boundaries(ax, report: Report) -> None:
    for attempt, x in report.boundaries:
        if attempt > 1:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"attempt {attempt}", (x, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -10), textcoords="offset points", fontsize=7, color="grey")


def _finish(ax, title: str, xlabel: str, ylabel: str, has_data: bool) -> None:
    if title:
        ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if has_data:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
