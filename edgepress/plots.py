"""The report's plots, each returned as an inline SVG string (no file, no network): see report_html.py.

One palette for every plot: Okabe-Ito colours (safe for colour-blind readers), each paired with its own
marker, so a greyscale print still tells the precisions apart. A point is labelled with its artifact's
number (the `#` column of the report's table), placed by a small repulsion so labels do not overlap.
matplotlib is imported only inside the functions that draw.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

# Okabe & Ito (2008), "Color Universal Design": distinct for every common colour-vision deficiency.
BLACK, ORANGE, SKY, GREEN, YELLOW, BLUE, VERMILLION, PURPLE = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
# Per precision: colour and marker (the marker carries the difference in greyscale). TFLite points are
# filled, ONNX points hollow.
STYLE = {
    "fp32": (BLACK, "o"),
    "fp16": (SKY, "s"),
    "dynamic": (GREEN, "D"),
    "int8_dynamic": (GREEN, "D"),
    "int8": (VERMILLION, "^"),
    "int8_static": (VERMILLION, "^"),
    "int16x8": (PURPLE, "v"),
    "sparse": (BLUE, "X"),
}
OTHER = (ORANGE, "P")
GATE_SHADE = "#d9d9d9"  # the region that fails a gate: light grey with hatching, readable in print


def style_of(precision: str, fmt: str) -> dict:
    """Scatter keywords for a point of this precision ("fp32 sparse" counts as sparse) and format."""
    colour, marker = STYLE["sparse"] if precision.endswith("sparse") else STYLE.get(precision, OTHER)
    face = colour if fmt == "tflite" else "white"
    return {"c": [face], "edgecolors": [colour], "marker": marker, "linewidths": 1.5}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "svg.fonttype": "path",  # text as shapes: the page looks the same whatever fonts the reader has
        "svg.hashsalt": "edgepress",  # stable ids: the same run gives the same file
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
    })
    return plt


def to_svg(fig, label: str, key: str) -> str:
    """The figure as an <svg> element for inlining: no XML prologue, ids made unique to `key` (several
    figures share one page), scaled to its container, and named for screen readers."""
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'id="([^"]+)"', rf'id="{key}-\1"', svg)
    svg = re.sub(r'(href="#|url\(#)([^")]+)', rf"\1{key}-\2", svg)
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return svg.replace("<svg ", f'<svg role="img" aria-label="{label}" class="plot" ', 1)


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 8) -> None:
    """Write each label beside its point, pushed apart from the other labels and from every point.

    A simple repulsion in pixels: each label starts up and right of its point; overlapping boxes push each
    other apart along the axis of least overlap, and points push boxes off themselves. A thin line joins a
    label that moved far to its point."""
    import numpy as np

    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # settle autoscaled limits: transData is then final (tight bbox only crops)
    points = ax.transData.transform(np.column_stack([xs, ys])) if len(xs) else np.zeros((0, 2))
    scale = fig.dpi / 72
    sizes = np.array([[0.62 * fontsize * len(t) * scale + 2, 1.2 * fontsize * scale] for t in labels])
    centres = points + np.column_stack([sizes[:, 0] / 2 + 4, sizes[:, 1] / 2 + 3]) if len(xs) else points
    radius = 5 * scale
    for _ in range(100):
        moved = False
        for i in range(len(centres)):
            for j in range(i + 1, len(centres)):
                gap = np.abs(centres[i] - centres[j]) - (sizes[i] + sizes[j]) / 2
                if (gap < 0).all():
                    axis = int(np.argmax(gap))  # the axis that needs the smaller push
                    sign = 1.0 if centres[i][axis] >= centres[j][axis] else -1.0
                    push = (-gap[axis] / 2 + 0.5) * sign
                    centres[i][axis] += push
                    centres[j][axis] -= push
                    moved = True
            for p in points:
                gap = np.abs(centres[i] - p) - sizes[i] / 2 - radius
                if (gap < 0).all():
                    axis = int(np.argmax(gap))
                    sign = 1.0 if centres[i][axis] >= p[axis] else -1.0
                    centres[i][axis] += (-gap[axis] + 0.5) * sign
                    moved = True
        if not moved:
            break
    for label, point, centre, size in zip(labels, points, centres, sizes, strict=True):
        offset = (centre - point) / scale  # in points
        far = np.linalg.norm(centre - point) > np.linalg.norm(size) / 2 + 12 * scale
        ax.annotate(label, xy=ax.transData.inverted().transform(point), xytext=offset, textcoords="offset points",
                    fontsize=fontsize, ha="center", va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "#555555"} if far else None)


def _legend(ax, points: Sequence[dict]) -> None:
    """The legend right of the axes: what was labelled (gates, lines), then each precision and format drawn."""
    handles, labels = ax.get_legend_handles_labels()
    for precision, fmt in dict.fromkeys((p["precision"], p["format"]) for p in points):
        handles.append(ax.scatter([], [], s=36, **style_of(precision, fmt)))
        labels.append(f"{fmt} {precision}")
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              borderaxespad=0)


def _pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes: lower x (latency) and higher y (accuracy), by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _log_limits(values: Sequence[float], limit: float | None) -> tuple[float, float]:
    """Log-axis limits around `values`, reaching out to a gate's `limit` only when it is within 10x of them
    (a far-off limit would squeeze every point to one side; its legend entry says where it is instead)."""
    every = [v for v in values if v is not None and v > 0]
    low, high = min(every), max(every)
    if limit is not None and low / 10 <= limit <= high * 10:
        low, high = min(low, limit), max(high, limit)
    return low / 1.5, high * 1.5


def _shade_beyond(ax, axis: str, limit: float, edge: float, label: str) -> None:
    """Shade (grey, hatched) the part of the axes past a gate's limit, from `limit` to the axes' `edge`."""
    span = ax.axvspan if axis == "x" else ax.axhspan
    low, high = sorted((limit, edge))
    shown = (ax.get_xlim() if axis == "x" else ax.get_ylim())
    if high < min(shown) or low > max(shown):  # the failing side is past the edge of the view
        label += ", off the chart: every point passes it"
    span(low, high, facecolor=GATE_SHADE, edgecolor="#9a9a9a", hatch="///" if axis == "x" else "\\\\\\",
         lw=0, alpha=0.6, label=label)


def _accuracy_limits(ax, p50s: list[float], accuracies: list[float], gates: dict, source_accuracy: float | None,
                     show_source: bool = False) -> None:
    """Axis limits of an accuracy (%) against p50 (ms, log) plot around its points, the accuracy floor (and the
    source model's accuracy when it is drawn), with the side that fails max_p50_ms / max_accuracy_drop shaded."""
    limit_ms, drop = gates.get("max_p50_ms"), gates.get("max_accuracy_drop")
    floor = None if drop is None or source_accuracy is None else (source_accuracy - drop) * 100
    xlo, xhi = _log_limits(p50s, limit_ms)
    source = source_accuracy * 100 if show_source and source_accuracy is not None else None
    ys = [a * 100 for a in accuracies] + [v for v in (floor, source) if v is not None]
    pad = max((max(ys) - min(ys)) * 0.15, 0.5)
    ylo, yhi = min(ys) - pad, max(ys) + pad
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    if limit_ms is not None:
        _shade_beyond(ax, "x", limit_ms, xhi * 100, f"fails max_p50_ms ({limit_ms:g} ms)")
    if floor is not None:
        _shade_beyond(ax, "y", floor, ylo, f"fails max_accuracy_drop ({drop * 100:.2f} pt)")
    ax.set_xlim(xlo, xhi)  # shading past the edges must not widen the view
    ax.set_ylim(ylo, yhi)


def accuracy_latency(device: str, points: list[dict], gates: dict, source_accuracy: float | None,
                     best: int | None, key: str) -> str:
    """Accuracy (%) against p50 (ms, log) for one device: the gates' failing regions shaded, the Pareto front
    joined, the recommended artifact ringed. `points`: {number, precision, format, p50, accuracy}."""
    plt = _pyplot()
    pts = [p for p in points if p["p50"] is not None and p["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    ax.set_title(f"{device}: accuracy against p50 latency")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("accuracy on the test set (%)")
    if not pts:
        ax.text(0.5, 0.5, "no artifact has both a p50 and an accuracy on this device", ha="center",
                transform=ax.transAxes)
        return to_svg(fig, f"{device}: no accuracy measured", key)
    _accuracy_limits(ax, [p["p50"] for p in pts], [p["accuracy"] for p in pts], gates, source_accuracy,
                     show_source=True)
    if source_accuracy is not None:
        ax.axhline(source_accuracy * 100, color="#555555", lw=0.8, ls="--", label="source model")
    front = _pareto([(p["p50"], p["accuracy"] * 100) for p in pts])
    ax.plot(*zip(*front, strict=True), color=BLUE, lw=1.2, ls="-", zorder=2, label="Pareto front")
    for p in pts:
        ax.scatter(p["p50"], p["accuracy"] * 100, s=36, zorder=3, **style_of(p["precision"], p["format"]))
    chosen = next((p for p in pts if p["number"] == best), None)
    if chosen is not None:
        ax.scatter(chosen["p50"], chosen["accuracy"] * 100, s=260, facecolors="none", edgecolors=BLACK,
                   linewidths=1.6, zorder=4, label=f"recommended (#{best})")
    ax.grid(alpha=0.25, which="major")
    place_labels(ax, [p["p50"] for p in pts], [p["accuracy"] * 100 for p in pts], [str(p["number"]) for p in pts])
    _legend(ax, pts)
    return to_svg(fig, f"{device}: accuracy against p50 latency", key)


def bytes_latency(device: str, points: list[dict], gates: dict, key: str) -> str:
    """File size (bytes, log) against p50 (ms, log) for one device, the size and latency gates shaded."""
    plt = _pyplot()
    pts = [p for p in points if p["p50"] is not None]
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    ax.set_title(f"{device}: file size against p50 latency")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("file size (bytes, log scale)")
    if not pts:
        ax.text(0.5, 0.5, "no latency measured on this device", ha="center", transform=ax.transAxes)
        return to_svg(fig, f"{device}: no latency measured", key)
    limit_ms, limit_bytes = gates.get("max_p50_ms"), gates.get("max_bytes")
    xlo, xhi = _log_limits([p["p50"] for p in pts], limit_ms)
    ylo, yhi = _log_limits([p["bytes"] for p in pts], limit_bytes)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    if limit_ms is not None:
        _shade_beyond(ax, "x", limit_ms, xhi * 100, f"fails max_p50_ms ({limit_ms:g} ms)")
    if limit_bytes is not None:
        _shade_beyond(ax, "y", limit_bytes, yhi * 100, f"fails max_bytes ({limit_bytes:,})")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    for p in pts:
        ax.scatter(p["p50"], p["bytes"], s=36, zorder=3, **style_of(p["precision"], p["format"]))
    ax.grid(alpha=0.25, which="major")
    place_labels(ax, [p["p50"] for p in pts], [p["bytes"] for p in pts], [str(p["number"]) for p in pts])
    _legend(ax, pts)
    return to_svg(fig, f"{device}: file size against p50 latency", key)


def perplexity_speed(device: str, points: list[dict], gates: dict, key: str) -> str:
    """A decoder LM's perplexity against its decode tokens/s (log) for one device, the max_perplexity and
    min_decode_tokens_per_s gates shaded. `points`: {number, precision, format, tokens_per_s, perplexity}."""
    plt = _pyplot()
    pts = [p for p in points if p["tokens_per_s"] is not None and p["perplexity"] is not None]
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    ax.set_title(f"{device}: perplexity against decode speed")
    ax.set_xscale("log")
    ax.set_xlabel("decode tokens/s (p50, log scale)")
    ax.set_ylabel("perplexity on the test windows")
    if not pts:
        ax.text(0.5, 0.5, "no decoder measured on this device", ha="center", transform=ax.transAxes)
        return to_svg(fig, f"{device}: no decoder measured", key)
    speeds, perplexities = [p["tokens_per_s"] for p in pts], [p["perplexity"] for p in pts]
    floor, ceiling = gates.get("min_decode_tokens_per_s"), gates.get("max_perplexity")
    xlo, xhi = _log_limits(speeds, floor)
    pad = max(0.05 * (max(perplexities) - min(perplexities)), 0.01 * max(perplexities))
    ylo = min(perplexities) - pad
    yhi = max([*perplexities, ceiling or 0]) + pad
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    if floor is not None:  # too slow: left of the floor
        _shade_beyond(ax, "x", floor, xlo / 100, f"fails min_decode_tokens_per_s ({floor:g})")
    if ceiling is not None:
        _shade_beyond(ax, "y", ceiling, yhi * 10, f"fails max_perplexity ({ceiling:g})")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    for p in pts:
        ax.scatter(p["tokens_per_s"], p["perplexity"], s=36, zorder=3, **style_of(p["precision"], p["format"]))
    ax.grid(alpha=0.25, which="major")
    place_labels(ax, speeds, perplexities, [str(p["number"]) for p in pts])
    _legend(ax, pts)
    return to_svg(fig, f"{device}: perplexity against decode tokens/s", key)


def has_times(rows: list[dict]) -> bool:
    """True when every row's latency keeps its timed runs (`latency.times`, ms): a true box plot can be drawn."""
    return bool(rows) and all(r["latency"].get("times") for r in rows if r["latency"].get("p50") is not None)


def latency_distribution(device: str, rows: list[dict], key: str) -> str:
    """Each artifact's latency on one device. With the timed runs (`latency.times`), a box plot of them (box:
    quartiles, whiskers: 1.5 IQR, dots: runs beyond). Without (results.json schema 1 keeps statistics only):
    drawn from the statistics, box from p50 to p90, whiskers from min to max, a bar at p99, a diamond at the
    mean. `rows`: {label, precision, format, latency {p50, p90, p99, min, max, mean[, times]}}."""
    plt = _pyplot()
    rows = [r for r in rows if r["latency"].get("p50") is not None]
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.28 * max(len(rows), 1)))
    ax.set_title(f"{device}: latency of each artifact ({rows[0]['latency'].get('runs', '?')} runs each)"
                 if rows else f"{device}: latency")
    ax.set_xscale("log")
    ax.set_xlabel("latency at batch 1 (ms, log scale)")
    if not rows:
        ax.text(0.5, 0.5, "no latency measured on this device", ha="center", transform=ax.transAxes)
        return to_svg(fig, f"{device}: no latency measured", key)
    if has_times(rows):
        ys = [len(rows) - 1 - i for i in range(len(rows))]
        parts = ax.boxplot([r["latency"]["times"] for r in rows], positions=ys, vert=False, widths=0.6,
                           patch_artist=True, medianprops={"color": BLACK, "lw": 2},
                           flierprops={"marker": ".", "markersize": 3, "markeredgecolor": "#444444"})
        for box, median, r in zip(parts["boxes"], parts["medians"], rows, strict=True):
            colour, _ = STYLE.get(r["precision"], OTHER)
            box.set(facecolor=colour if r["format"] == "tflite" else "white", edgecolor=colour, lw=1.4)
            if colour == BLACK and r["format"] == "tflite":
                median.set_color("white")  # visible on a black box
    for i, r in enumerate(rows if not has_times(rows) else []):
        lat, y = r["latency"], len(rows) - 1 - i
        colour, _ = STYLE.get(r["precision"], OTHER)
        low, high = lat.get("min", lat["p50"]), lat.get("max", lat["p50"])
        ax.plot([low, high], [y, y], color="#444444", lw=0.9, zorder=1)
        for end in (low, high):
            ax.plot([end, end], [y - 0.15, y + 0.15], color="#444444", lw=0.9)
        if lat.get("p90") is not None:
            ax.add_patch(plt.Rectangle((lat["p50"], y - 0.3), lat["p90"] - lat["p50"], 0.6, zorder=2,
                                       facecolor=colour if r["format"] == "tflite" else "white", edgecolor=colour,
                                       lw=1.4))
        ax.plot([lat["p50"], lat["p50"]], [y - 0.3, y + 0.3], color=BLACK, lw=2, zorder=3)
        if lat.get("p99") is not None:
            ax.plot([lat["p99"]] * 2, [y - 0.22, y + 0.22], color=BLACK, lw=1.2, zorder=3)
        if lat.get("mean") is not None:
            ax.scatter(lat["mean"], y, marker="D", s=16, c="white", edgecolors=BLACK, linewidths=1, zorder=4)
    ax.set_yticks(range(len(rows)), [r["label"] for r in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.grid(alpha=0.25, axis="x", which="major")
    return to_svg(fig, f"{device}: latency of each artifact", key)


def steps(models: list[dict], key: str) -> str:
    """Parameters and MACs (multiply-accumulates per sample) of the source and the model after each step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.8))
    names = [f"{i}. {m['stage']}" for i, m in enumerate(models)]
    for ax, field, title, colour, hatch in ((axes[0], "params", "parameters", BLUE, ""),
                                            (axes[1], "macs", "MACs per sample", ORANGE, "//")):
        values = [m.get(field) or 0 for m in models]
        bars = ax.bar(names, values, color=colour, edgecolor=BLACK, lw=0.6, hatch=hatch)
        ax.set_title(title)
        ax.set_ylim(0, max(values + [1]) * 1.25)
        for bar, m, value in zip(bars, models, values, strict=True):
            note = f"{value:,.0f}" + (f"\n{m['sparsity']:.0%} zeros"
                                      if field == "params" and m.get("sparsity") else "")
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.ticklabel_format(axis="y", style="plain")
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    fig.tight_layout()
    return to_svg(fig, "parameters and MACs per step", key)


def sensitivity(entry: dict, key: str) -> str:
    """An accuracy-aware export's layers ranked by their quantization error (log scale), the layers the
    final artifact keeps in float hatched and dark. `entry`: one item of results["quantize"]."""
    plt = _pyplot()
    layers = entry["sensitivity"]
    chosen = next((t for t in entry["trials"] if t["artifact"] == entry["chosen"]), None)
    kept = {row["layer"] for row in (chosen or {}).get("float_layers", [])}
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.26 * max(len(layers), 1)))
    ax.set_title(f"{entry['format']} {entry['precision']}: layers by quantization error (most sensitive first)")
    values = [max(s["error"] or 0, 1e-12) for s in layers]
    ys = list(range(len(layers)))[::-1]
    colours = [VERMILLION if s["layer"] in kept else SKY for s in layers]
    hatches = ["xx" if s["layer"] in kept else "" for s in layers]
    for y, value, colour, hatch in zip(ys, values, colours, hatches, strict=True):
        ax.barh(y, value, color=colour, edgecolor=BLACK, lw=0.6, hatch=hatch)
    ax.set_yticks(ys, [s["layer"] if s.get("is_layer", True) else f"({s['layer']})" for s in layers], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("error: RMS of float - int8 output, in units of a typical float activation (log scale)")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor=VERMILLION, edgecolor=BLACK, hatch="xx", label="kept in float in the final "
                             "artifact"), Patch(facecolor=SKY, edgecolor=BLACK, label="int8")],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
    ax.grid(alpha=0.25, axis="x", which="major")
    return to_svg(fig, f"{entry['format']} {entry['precision']}: sensitivity ranking", key)


# -- `edgepress tune`: its report.html draws one of these per device ----------------------------------------

def tune_front(device: str, points: list[dict], front: list[dict], best: dict | None, budgets: dict,
               source_accuracy: float | None, key: str) -> str:
    """Accuracy (%) against p50 (ms, log) of every artifact a tune measured on `device` (faded), its Pareto front
    over accuracy, p50 and bytes (full colour; the accuracy-latency envelope of the front joined), the
    recommended artifact ringed, the accuracy and p50 budgets shaded. Points are tune.json rows: {trial,
    artifact, format, precision, accuracy, p50_ms, bytes}; `front` and `best` are tune.json's for this device."""
    plt = _pyplot()
    pts = [p for p in points if p.get("p50_ms") and p.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    ax.set_title(f"{device}: every artifact the tune measured")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("accuracy on the test set (%)")
    if not pts:
        ax.text(0.5, 0.5, "no artifact was measured on this device", ha="center", transform=ax.transAxes)
        return to_svg(fig, f"{device}: nothing measured", key)
    _accuracy_limits(ax, [p["p50_ms"] for p in pts], [p["accuracy"] for p in pts], budgets, source_accuracy)
    on_front = {(p["trial"], p["artifact"]) for p in front}
    for p in pts:
        ax.scatter(p["p50_ms"], p["accuracy"] * 100, s=36 if (p["trial"], p["artifact"]) in on_front else 18,
                   zorder=3, alpha=1.0 if (p["trial"], p["artifact"]) in on_front else 0.35,
                   **style_of(p["precision"], p["format"]))
    envelope = _pareto([(p["p50_ms"], p["accuracy"] * 100) for p in front if p.get("p50_ms")
                        and p.get("accuracy") is not None])
    if envelope:
        ax.plot(*zip(*envelope, strict=True), color=BLUE, lw=1.2, zorder=2, label="Pareto front")
    if best and best.get("p50_ms") and best.get("accuracy") is not None:
        ax.scatter(best["p50_ms"], best["accuracy"] * 100, s=260, facecolors="none", edgecolors=BLACK,
                   linewidths=1.6, zorder=4, label=f"recommended (trial {best['trial']})")
    ax.grid(alpha=0.25, which="major")
    _legend(ax, pts)
    return to_svg(fig, f"{device}: accuracy against p50 latency of every artifact tried", key)


def op_time(device: str, rows: list[dict], key: str) -> str:
    """Where each artifact's time goes on one device: a bar per artifact, its per-op profile added up by op type
    (the most costly types each their own colour, the rest as "other"), the part the delegate or execution provider
    did not run hatched. `rows`: {label, profile {by_type, ops [{op, us, runs_on}]}}."""
    plt = _pyplot()
    rows = [r for r in rows if r["profile"] and r["profile"].get("ops")]
    fig, ax = plt.subplots(figsize=(7.2, 1.1 + 0.3 * max(len(rows), 1)))
    ax.set_title(f"{device}: time per op type, summed over each artifact's ops")
    ax.set_xlabel("time in the ops (µs; each op timed alone: see the table)")
    if not rows:
        ax.text(0.5, 0.5, "no op profile on this device", ha="center", transform=ax.transAxes)
        return to_svg(fig, f"{device}: no op profile", key)
    totals: dict[str, float] = {}
    for r in rows:
        for op, us in r["profile"]["by_type"].items():
            totals[op] = totals.get(op, 0.0) + us
    named = [op for op, _ in sorted(totals.items(), key=lambda item: -item[1])][:6]
    palette = [BLUE, VERMILLION, GREEN, ORANGE, SKY, PURPLE, YELLOW]
    colours = {op: palette[i] for i, op in enumerate(named)} | {"other": "#999999"}
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        parts: dict[tuple[str, bool], float] = {}
        for op in r["profile"]["ops"]:
            if op["us"] is None:
                continue
            group = op["op"] if op["op"] in colours else "other"
            offloaded = bool(op.get("offloaded"))
            parts[(group, offloaded)] = parts.get((group, offloaded), 0.0) + op["us"]
        left = 0.0
        for group in [*named, "other"]:
            for offloaded in (True, False):
                width = parts.get((group, offloaded), 0.0)
                if width:
                    ax.barh(y, width, left=left, color=colours[group], edgecolor="white", linewidth=0.6,
                            hatch="" if offloaded else "///")
                    left += width
    ax.set_yticks(range(len(rows)), [r["label"] for r in reversed(rows)], fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in [*named, "other"]]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor=BLACK, hatch="///"))
    ax.legend(handles, [*named, "other", "not on the delegate / first provider"], fontsize=7, loc="lower right",
              frameon=False)
    ax.grid(alpha=0.25, axis="x")
    return to_svg(fig, f"{device}: time per op type of each artifact", key)
