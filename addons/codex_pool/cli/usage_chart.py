"""`scripts/usage-report --chart FILE.png|FILE.svg`: tokens per day, stacked per account (top
panel) and per model (bottom panel), drawn with matplotlib.

matplotlib is an optional extra (`pip install -e '.[charts]'`), imported only when a chart is
drawn, with the Agg backend (no display needed). The input is the rows of
`core.usage_report.aggregate` grouped by `day,account` and `day,model` (`rollup` makes both from
one `day,account,model` pass, so the two panels always add up to the same totals); nothing here
reads the ledger: the only I/O is writing the chart file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from codex_pool.core.usage_report import COUNT_FIELDS, UNKNOWN

FORMATS = ("png", "svg")
METRIC = "total_tokens"  # input + output tokens (cached input is part of input, reasoning of output)
WIDTH_IN, HEIGHT_IN, DPI = 12.0, 8.0, 100  # a PNG is WIDTH_IN*DPI x HEIGHT_IN*DPI pixels
MAX_EMPTY_SPAN_DAYS = 366  # an open or far bound wider than this: the axis covers the recorded days only
INSTALL_HINT = "pip install -e '.[charts]'"


class ChartUnavailable(RuntimeError):
    """matplotlib cannot be imported; the message says how to install it."""


def _matplotlib():
    """Import matplotlib with the Agg backend, or raise ChartUnavailable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError as e:
        raise ChartUnavailable(f"--chart needs matplotlib, an optional extra of codex-pool "
                               f"(import failed: {e}); install it with: {INSTALL_HINT}") from None
    return matplotlib, Figure, FuncFormatter


def check_available() -> None:
    """Raise ChartUnavailable now rather than after reading the ledger."""
    _matplotlib()


def chart_format(path: str) -> str:
    """`png` or `svg` from the file name; ValueError otherwise."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if ext not in FORMATS:
        raise ValueError(f"{path!r}: the chart file must end in .png or .svg")
    return ext


def rollup(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of a finer grouping (e.g. day,account,model) summed to `keys` (e.g. day,account), in
    the order `aggregate` gives them (sorted by the keys)."""
    acc: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        key = tuple(str(r.get(k, UNKNOWN)) for k in keys)
        out = acc.get(key)
        if out is None:
            out = acc[key] = {**dict(zip(keys, key)), **dict.fromkeys(COUNT_FIELDS, 0)}
        for f in COUNT_FIELDS:
            out[f] += int(r.get(f) or 0)
    return [acc[k] for k in sorted(acc)]


def _days(rows: Sequence[Mapping[str, Any]], first: str | None, last: str | None) -> list[str]:
    """Every day from `first` to `last` (YYYY-MM-DD, inclusive); an open end is the first/last
    recorded day, and a span of more than MAX_EMPTY_SPAN_DAYS shrinks to the recorded days."""
    seen = sorted({r["day"] for r in rows if r.get("day") not in (None, UNKNOWN)})
    lo = first or (seen[0] if seen else None)
    hi = last or (seen[-1] if seen else None)
    if lo is None or hi is None:
        return []
    start, end = date.fromisoformat(lo), date.fromisoformat(hi)
    if seen and (end - start).days + 1 > MAX_EMPTY_SPAN_DAYS:
        start, end = max(start, date.fromisoformat(seen[0])), min(end, date.fromisoformat(seen[-1]))
    n = (end - start).days + 1
    return [(start + timedelta(days=i)).isoformat() for i in range(max(n, 0))]


def series(rows: Sequence[Mapping[str, Any]], key: str, days: Sequence[str],
           metric: str = METRIC) -> dict[str, list[int]]:
    """name -> tokens per day (aligned with `days`), names ordered by their total, largest first
    (ties by name). Every name in the rows is kept, also one with no tokens in the period."""
    index = {d: i for i, d in enumerate(days)}
    out: dict[str, list[int]] = {}
    for r in rows:
        name = str(r.get(key, UNKNOWN))
        values = out.setdefault(name, [0] * len(days))
        i = index.get(r.get("day"))
        if i is not None:
            values[i] += int(r.get(metric) or 0)
    return dict(sorted(out.items(), key=lambda kv: (-sum(kv[1]), kv[0])))


def human(n: float) -> str:
    """1234 -> 1.2K, 5_600_000 -> 5.6M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            text = f"{n / size:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{n:.0f}"


def build_figure(account_rows: Sequence[Mapping[str, Any]], model_rows: Sequence[Mapping[str, Any]], *,
                 period: str = "", first_day: str | None = None, last_day: str | None = None):
    """The matplotlib Figure (not saved). `period` is the selection in words (shown in the title);
    `first_day`/`last_day` bound the x axis (None: the recorded days)."""
    matplotlib, Figure, FuncFormatter = _matplotlib()
    days = _days([*account_rows, *model_rows], first_day, last_day)
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    panels = ((axes[0], "account", account_rows, "tab10"), (axes[1], "model", model_rows, "Set2"))
    x = list(range(len(days)))
    for ax, key, rows, cmap_name in panels:
        data = series(rows, key, days)
        cmap = matplotlib.colormaps[cmap_name]
        bottom = [0] * len(days)
        for i, (name, values) in enumerate(data.items()):
            ax.bar(x, values, bottom=bottom, width=0.8, color=cmap(i % cmap.N), edgecolor="white", linewidth=0.5,
                   label=f"{name}  {human(sum(values))}")
            bottom = [b + v for b, v in zip(bottom, values)]
        total = sum(bottom)
        ax.set_title(f"per {key}  (total {human(total)} tokens)", loc="left", fontsize=11)
        ax.set_ylabel("tokens (input + output)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: human(v)))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if data:
            ncol = 1 + (len(data) - 1) // 18
            handles, labels = ax.get_legend_handles_labels()
            # largest first, as the names are ordered; the stack draws it at the bottom
            ax.legend(handles, labels, title=key, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      frameon=False, fontsize=9, ncols=ncol)
        else:
            ax.text(0.5, 0.5, "no usage recorded", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax = axes[1]
    step = max(1, -(-len(days) // 31))  # at most ~31 date labels
    ax.set_xticks(x[::step], [d[5:] if len({d[:4] for d in days}) == 1 else d for d in days[::step]],
                  rotation=45 if len(days) > 10 else 0, ha="right" if len(days) > 10 else "center")
    if days:
        ax.set_xlim(-0.6, len(days) - 0.4)
    ax.set_xlabel("day (UTC)")
    span = f"{days[0]} to {days[-1]}" if days else "no days"
    fig.suptitle(f"codex-pool: tokens per day {period}".rstrip() + f"\n{span} (UTC)", fontsize=13)
    return fig


def figure_legend_labels(fig) -> dict[str, list[str]]:
    """The names in the figure's legends: {"account": [...], "model": [...]} (the totals after the
    names left off), read back from the drawn legends."""
    out: dict[str, list[str]] = {}
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        out[legend.get_title().get_text()] = [t.get_text().rsplit("  ", 1)[0] for t in legend.get_texts()]
    return out


def legend_labels(account_rows: Sequence[Mapping[str, Any]], model_rows: Sequence[Mapping[str, Any]],
                  **kwargs: Any) -> dict[str, list[str]]:
    """What `write_chart` puts in the legends for these rows (the figure is built, not saved)."""
    return figure_legend_labels(build_figure(account_rows, model_rows, **kwargs))


def write_chart(path: str, account_rows: Sequence[Mapping[str, Any]], model_rows: Sequence[Mapping[str, Any]],
                **kwargs: Any) -> dict[str, Any]:
    """Draw and save to `path` (.png or .svg; SVG keeps its texts as text). Returns what was
    drawn: {"format", "days", "width", "height", "legend": {"account": [...], "model": [...]}}."""
    fmt = chart_format(path)
    matplotlib, _Figure, _F = _matplotlib()
    fig = build_figure(account_rows, model_rows, **kwargs)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "codex-pool"}):
        fig.savefig(path, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
    return {
        "format": fmt,
        "days": len(_days([*account_rows, *model_rows], kwargs.get("first_day"), kwargs.get("last_day"))),
        "width": int(round(WIDTH_IN * DPI)),
        "height": int(round(HEIGHT_IN * DPI)),
        "legend": figure_legend_labels(fig),
    }


__all__ = ["ChartUnavailable", "FORMATS", "INSTALL_HINT", "build_figure", "chart_format", "check_available",
           "figure_legend_labels", "legend_labels", "rollup", "series", "write_chart"]
