"""What a tune writes: tune.json (every trial), the Pareto front per device (tune.html with an inline SVG plot
per device) and best-<device>.yaml (a plain recipe that reproduces the recommended artifact).

tune.json, schema_version 1:
    schema_version, created, duration_s, objectives, budgets {max_accuracy_drop, max_p50_ms, max_bytes},
    space {ratio, ratio_step, fine_tune_epochs, distill, round_to, exports {device: [format:precision]}, aware_drop},
    source {accuracy, params, macs, rows [float baseline rows: artifact, device, accuracy, p50_ms, bytes]},
    trials [{number, status (complete, pruned, failed, cached, interrupted), reason, params, key, duration_s,
             run_dir, worker (host:pid that ran it), params_count, macs, model_accuracy,
             chosen {device: {artifact, accuracy, p50_ms, bytes} of the export chosen for it},
             models [{stage, accuracy, params, macs}], devices {name: error or null},
             rows [{artifact, device, format, precision, accuracy, accuracy_drop, p50_ms, bytes, gzip_bytes, passed}]}],
    pareto {device: [rows]}, best {device: row + {trial, recipe} or null},
    closest {device: row + {misses}} for a device with no artifact within the budgets, passed
"""

from __future__ import annotations

import html
import math

from edgepress import files


def pareto_front(points: list[dict], maximize: tuple[str, ...] = ("accuracy",),
                 minimize: tuple[str, ...] = ("p50_ms", "bytes")) -> list[dict]:
    """The points no other point dominates (at least as good on every objective, better on one).

    Points missing an objective (None) are left out. Equal points are all kept. Sorted by the first of
    `minimize` (then the others), so the front reads fastest first.
    """
    keys = [(k, -1.0) for k in maximize] + [(k, 1.0) for k in minimize]
    usable = [p for p in points if all(p.get(k) is not None for k, _ in keys)]
    costs = [tuple(sign * float(p[k]) for k, sign in keys) for p in usable]

    def dominated(c) -> bool:
        return any(all(o <= v for o, v in zip(other, c, strict=True)) and other != c for other in costs)

    front = [p for p, c in zip(usable, costs, strict=True) if not dominated(c)]
    return sorted(front, key=lambda p: tuple(float(p[k]) for k in (*minimize, *maximize)))


def point_of(row: dict, trial: int | None) -> dict:
    """A report row as a tune point: what tune.json, the Pareto front and the plot use."""
    return {"trial": trial, "artifact": row["name"], "device": row["device"], "format": row["format"],
            "precision": row["precision"], "accuracy": row["metrics"].get("accuracy"),
            "accuracy_drop": row["metrics"].get("accuracy_drop"), "p50_ms": row["latency"].get("p50"),
            "bytes": row["bytes"], "gzip_bytes": row.get("gzip_bytes"), "passed": row.get("passed"),
            "role": (row.get("accuracy_aware") or {}).get("role")}


def misses(point: dict, budgets: dict) -> dict[str, float]:
    """How far `point` is over each budget, relative to the budget (0 within it)."""
    values = {"max_accuracy_drop": point["accuracy_drop"], "max_p50_ms": point["p50_ms"], "max_bytes": point["bytes"]}
    out = {}
    for gate, limit in budgets.items():
        if limit is None:
            continue
        value = values[gate]
        out[gate] = math.inf if value is None else max(0.0, (value - limit) / (limit or 1e-9))
    return out


def write_html(path, tune: dict) -> None:
    """tune.html: per device, the Pareto plot (inline SVG) and the front as a table."""
    budgets = tune["budgets"]
    parts = [f"<h1>edgepress tune</h1><p>{len(tune['trials'])} trials, {tune['duration_s']:.0f} s; source accuracy "
             f"{_pct(tune['source']['accuracy'])}; budgets: " + html.escape(
                 ", ".join(f"{k} {v}" for k, v in budgets.items() if v is not None) or "none") + "</p>"]
    for device, front in tune["pareto"].items():
        points = [p for t in tune["trials"] for p in t.get("rows", []) if p["device"] == device]
        points += [p for p in tune["source"]["rows"] if p["device"] == device]
        best = tune["best"].get(device)
        parts.append(f"<h2>{html.escape(device)}</h2>")
        parts.append(svg_plot(points, front, best, budgets, tune["source"]["accuracy"]))
        parts.append("<table><tr><th>trial</th><th>artifact</th><th>accuracy</th><th>p50 ms</th><th>bytes</th>"
                     "<th>within budgets</th></tr>")
        for p in front:
            star = " ★" if best and (p["trial"], p["artifact"]) == (best["trial"], best["artifact"]) else ""
            parts.append(f"<tr><td>{p['trial'] if p['trial'] is not None else 'source'}</td>"
                         f"<td>{html.escape(p['artifact'])}{star}</td><td>{_pct(p['accuracy'])}</td>"
                         f"<td>{_num(p['p50_ms'])}</td><td>{p['bytes']:,}</td><td>{'yes' if p['passed'] else 'no'}"
                         "</td></tr>")
        parts.append("</table>")
        if best:
            parts.append(f"<p>Recommended: trial {best['trial']} {html.escape(best['artifact'])} "
                         f"({html.escape(best['recipe'])}).</p>")
        elif device in tune["closest"]:
            c = tune["closest"][device]
            parts.append(f"<p>No artifact within the budgets; closest: {html.escape(c['artifact'])} "
                         f"(trial {c['trial']}).</p>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px;text-align:right}")
    files.write_text(path, f"<!doctype html><html><head><meta charset='utf-8'><title>edgepress tune</title>"
                           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def svg_plot(points: list[dict], front: list[dict], best: dict | None, budgets: dict,
             source_accuracy: float | None, width: int = 640, height: int = 360) -> str:
    """Accuracy against p50 (log scale), one circle per artifact (area grows with bytes); the Pareto front in
    blue, joined fastest first; the recommended artifact ringed in red; the budgets dashed."""
    points = [p for p in points if p["accuracy"] is not None and p["p50_ms"]]
    if not points:
        return "<p>No measured artifact to plot.</p>"
    pad, xs, ys = 50, [math.log10(p["p50_ms"]) for p in points], [p["accuracy"] for p in points]
    x0, x1 = min(xs) - 0.05, max(xs) + 0.05
    y0, y1 = min(ys) - 0.005, max(ys) + 0.005
    big = max(p["bytes"] for p in points)

    def sx(ms: float) -> float:
        return pad + (math.log10(ms) - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(acc: float) -> float:
        return height - pad - (acc - y0) / (y1 - y0) * (height - 2 * pad)

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='11'>",
           f"<rect x='{pad}' y='{pad}' width='{width - 2 * pad}' height='{height - 2 * pad}' fill='none' "
           "stroke='#999'/>",
           f"<text x='{width / 2}' y='{height - 12}' text-anchor='middle'>p50 latency, ms (log)</text>",
           f"<text x='14' y='{height / 2}' transform='rotate(-90 14 {height / 2})' "
           "text-anchor='middle'>accuracy</text>",
           f"<text x='{pad}' y='{height - pad + 14}'>{10 ** x0:.3g}</text>",
           f"<text x='{width - pad}' y='{height - pad + 14}' text-anchor='end'>{10 ** x1:.3g}</text>",
           f"<text x='{pad - 4}' y='{height - pad}' text-anchor='end'>{y0:.1%}</text>",
           f"<text x='{pad - 4}' y='{pad + 8}' text-anchor='end'>{y1:.1%}</text>"]
    if budgets.get("max_p50_ms") and x0 <= math.log10(budgets["max_p50_ms"]) <= x1:
        x = sx(budgets["max_p50_ms"])
        out.append(f"<line x1='{x:.1f}' y1='{pad}' x2='{x:.1f}' y2='{height - pad}' stroke='#c00' "
                   "stroke-dasharray='4'/>")
    if budgets.get("max_accuracy_drop") is not None and source_accuracy is not None:
        floor = source_accuracy - budgets["max_accuracy_drop"]
        if y0 <= floor <= y1:
            out.append(f"<line x1='{pad}' y1='{sy(floor):.1f}' x2='{width - pad}' y2='{sy(floor):.1f}' "
                       "stroke='#c00' stroke-dasharray='4'/>")
    on_front = {(p["trial"], p["artifact"]) for p in front}
    line = " ".join(f"{sx(p['p50_ms']):.1f},{sy(p['accuracy']):.1f}" for p in front if p in points)
    if line:
        out.append(f"<polyline points='{line}' fill='none' stroke='#2463eb'/>")
    for p in points:
        r = 3 + 5 * math.sqrt(p["bytes"] / big)
        colour = "#2463eb" if (p["trial"], p["artifact"]) in on_front else "#aaa"
        label = (("source" if p["trial"] is None else f"trial {p['trial']}") + f" {p['artifact']}: "
                 f"{_pct(p['accuracy'])}, {_num(p['p50_ms'])} ms, {p['bytes']:,} bytes")
        out.append(f"<circle cx='{sx(p['p50_ms']):.1f}' cy='{sy(p['accuracy']):.1f}' r='{r:.1f}' fill='{colour}' "
                   f"fill-opacity='0.6'><title>{html.escape(label)}</title></circle>")
    if best and best.get("p50_ms") and best.get("accuracy") is not None:
        out.append(f"<circle cx='{sx(best['p50_ms']):.1f}' cy='{sy(best['accuracy']):.1f}' r='10' fill='none' "
                   "stroke='#c00' stroke-width='2'/>")
    out.append("</svg>")
    return "".join(out)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"
