"""report.html: one self-contained page (plots inline as SVG, a few lines of inline JavaScript, no external
file, font or network), readable on a laptop screen and printable.

Order: the recommendation per device and its gates (with the margin each passed or failed by), the artifact
table (sortable by clicking a column header), the plots, the model after each step, accuracy-aware
quantization, notes, and a legend that defines the words the table uses.
"""

from __future__ import annotations

import html
import json

from edgepress import plots
from edgepress.across import across_text
from edgepress.console import name_prefix
from edgepress.text import drop_text, op_text, or_dash, percent, stage_notes, top_ops
from edgepress.verdict import delivered, gate_value

GATE_WORDS = {
    "max_accuracy_drop": "accuracy drop from the source model",
    "max_p50_ms": "p50 latency",
    "max_bytes": "file size",
    "max_perplexity": "perplexity",
    "max_memory_mb": "peak memory",
    "min_decode_tokens_per_s": "decode tokens/s",
    "max_ttft_ms": "time to first token",
    "quantize_max_accuracy_drop": "accuracy-aware budget: drop from the exported float model",
    "quantize_min_int8_macs": "accuracy-aware int8: share of MACs in integer kernels",
}
# Columns sorted by a number (their raw value), the rest by text.
RAW = {
    "bytes": lambda a: a["bytes"],
    "gzip bytes": lambda a: a["gzip_bytes"],
    "accuracy": lambda a: a["metrics"]["accuracy"],
    "drop": lambda a: a["metrics"]["accuracy_drop"],
    "agreement": lambda a: a["metrics"]["agreement"],
    "perplexity": lambda a: a["metrics"].get("perplexity"),
    "p50 ms": lambda a: a["latency"]["p50"],
    "p90 ms": lambda a: a["latency"]["p90"],
    "int8 MACs": lambda a: (a.get("quantization") or {}).get("int8_macs"),
    "int16 MACs": lambda a: (a.get("quantization") or {}).get("int16_macs"),
}
RATIOS = ("size vs fp32", "speed-up vs fp32")  # formatted "1.23x"


def e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render(report) -> str:
    """The whole page for `report` (an edgepress.report.Report)."""
    results = report.results
    numbers = artifact_numbers(report)
    title = e(results["recipe"]["name"])
    body = [
        f"<header><h1>edgepress report: {title}</h1><p class='meta'>{e(report.summary())}. "
        f"Created {e(results.get('created', '?'))}, {e(results.get('duration_s', '?'))} s.</p></header>",
        _summary(report),
        _artifact_table(report, numbers),
        _plots(report, numbers),
        _profiles(report, numbers),
        _steps(report),
        _quantize(report),
        _notes(report),
        LEGEND,
    ]
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>edgepress: {title}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(part for part in body if part)
        + f"\n<script>{SCRIPT}</script></body></html>\n"
    )


def artifact_numbers(report) -> dict[str, int]:
    """Each artifact file's number, 1.. in table order: the table's # column and the plots' point labels."""
    return {name: i for i, name in enumerate(dict.fromkeys(a["name"] for a, _ in report.rows()), start=1)}


# -- the recommendation per device ------------------------------------------------------------------------------

def _summary(report) -> str:
    results = report.results
    verdict = "PASSED" if report.passed else "FAILED"
    cards = []
    for device, info in results["devices"].items():
        if info.get("error"):
            cards.append(f"<div class='card fail'><h3>{e(device)}: not measured</h3><p>{e(info['error'])}</p></div>")
            continue
        if info.get("emulated"):
            cards.append(f"<div class='card'><h3>{e(device)}: emulated, no recommendation</h3><p>Its CPU is emulated: "
                         "accuracy and agreement are its ARM kernels', latency is recorded but not a board's. See "
                         "the notes for each artifact against the other devices.</p></div>")
            continue
        cards.append(_device_card(report, device))
    require = {"any": "every device needs an artifact that meets every gate",
               "all": "every artifact must meet every gate"}[results["gates"]["require"]]
    return (f"<section id='summary'><h2>Recommendation <span class='verdict {verdict.lower()}'>{verdict}</span></h2>"
            f"<p>{e(report.verdict())} (require {e(results['gates']['require'])}: {e(require)}.)</p>"
            f"<div class='cards'>{''.join(cards)}</div></section>")


def _device_card(report, device: str) -> str:
    prefix = name_prefix([a["name"] for a in report.artifacts])
    rows = [(a, r) for a, r in report.rows() if a["device"] == device]
    kept = {id(a) for a in delivered([a for a, _ in rows])}  # an accuracy-aware export's tries are not judged
    delivered_rows = [(a, r) for a, r in rows if id(a) in kept]
    passing = [(a, r) for a, r in delivered_rows if a["passed"]]
    best = next(((a, r) for a, r in rows if r["best"]), None)
    if best is None:
        head = f"<h3>{e(device)}: no artifact meets every gate</h3>"
        why = (f"<p>None of the {len(delivered_rows)} artifacts measured here meets every gate. Closest to each gate "
               "below.</p>")
        return f"<div class='card fail'>{head}{why}{_closest_gates(delivered_rows)}</div>"
    a, r = best
    faster = sorted((x for x in passing if x[0]["name"] != a["name"] and x[0]["latency"]["p50"] is not None),
                    key=lambda x: x[0]["latency"]["p50"])
    runner_up = (f" Next: {e(faster[0][0]['name'][len(prefix):])} at {faster[0][1]['p50 ms']} ms."
                 if faster else "")
    is_fp32 = a["precision"] == "fp32" and r["precision"] == "fp32"  # the baseline itself: no ratio to give
    speed = (f", {e(r['speed-up vs fp32'])} the speed of {e(a['format'])} fp32"
             if r["speed-up vs fp32"] != "-" and not is_fp32 else "")
    size = f" ({e(r['size vs fp32'])} of fp32)" if r["size vs fp32"] != "-" and not is_fp32 else ""
    why = (f"<p class='why'>Fastest (p50 {e(r['p50 ms'])} ms{speed}) of the {len(passing)} of {len(delivered_rows)} "
           f"artifacts that meet every gate on {e(device)}; accuracy {e(r['accuracy'])} "
           f"({e(drop_text(a['metrics']['accuracy_drop']))}), {e(r['bytes'])} bytes{size}.{runner_up}</p>")
    head = (f"<h3>{e(device)}: <span class='star'>★</span> <code title='{e(a['name'])}'>"
            f"{e(a['name'][len(prefix):])}</code> <span class='dim'>{e(a['format'])} {e(r['precision'])}</span></h3>")
    return f"<div class='card pass'>{head}{why}{_gate_table(a['gates'])}</div>"


def _gate_table(gates: dict) -> str:
    if not gates:
        return "<p>No gates set.</p>"
    lines = "".join(
        f"<tr class='{'pass' if g['passed'] else 'fail'}'><td>{e(GATE_WORDS.get(name, name))}</td>"
        f"<td>{'pass' if g['passed'] else 'FAIL'}</td><td>{e(_value(name, g['value']))}</td>"
        f"<td>{_sign(g)} {e(gate_value(name, g['limit']))}</td><td>{e(margin(name, g))}</td></tr>"
        for name, g in gates.items()
    )
    return ("<table class='gates'><thead><tr><th>gate</th><th></th><th>measured</th><th>limit</th><th>margin</th>"
            f"</tr></thead><tbody>{lines}</tbody></table>")


def _closest_gates(rows: list[tuple[dict, dict]]) -> str:
    """For a device with no passing artifact: per gate, the artifact closest to passing it, and how many pass."""
    names = dict.fromkeys(name for a, _ in rows for name in a["gates"])
    lines = []
    for name in names:
        measured = [(a, a["gates"][name]) for a, _ in rows if name in a["gates"] and a["gates"][name]["value"]
                    is not None]
        passing = sum(g["passed"] for _, g in measured)
        if not measured:
            lines.append(f"<tr class='fail'><td>{e(GATE_WORDS.get(name, name))}</td><td>FAIL</td>"
                         "<td colspan='3'>not measured on this device</td></tr>")
            continue
        a, g = min(measured, key=lambda x: _past(x[1]))
        lines.append(
            f"<tr class='{'pass' if passing else 'fail'}'><td>{e(GATE_WORDS.get(name, name))}</td>"
            f"<td>{passing} of {len(rows)} pass</td><td>best: {e(_value(name, g['value']))} "
            f"<span class='dim'>({e(a['name'])})</span></td><td>{_sign(g)} {e(gate_value(name, g['limit']))}</td>"
            f"<td>{e(margin(name, g))}</td></tr>")
    return ("<table class='gates'><thead><tr><th>gate</th><th></th><th>measured</th><th>limit</th><th>margin</th>"
            f"</tr></thead><tbody>{''.join(lines)}</tbody></table>")


def _sign(gate: dict) -> str:
    return "&ge;" if gate.get("minimum") else "&le;"


def _past(gate: dict) -> float:
    """How far the measured value is past the limit (negative: inside it), for a maximum or a minimum gate."""
    return gate["limit"] - gate["value"] if gate.get("minimum") else gate["value"] - gate["limit"]


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    if name in ("max_accuracy_drop", "quantize_max_accuracy_drop"):
        return drop_text(value)
    return gate_value(name, value)


def margin(name: str, gate: dict) -> str:
    """How far a gate's measured value is inside its limit ("… to spare") or past it ("… over")."""
    if gate["value"] is None:
        return "not measured: fails"
    room = -_past(gate)
    amount = gate_value(name, abs(room))
    # A share of the limit reads well for sizes and times, not for a drop that may be a gain.
    share = ""
    if gate["limit"] and "accuracy_drop" not in name:
        fraction = abs(room) / gate["limit"]
        share = " (>99%)" if 0.99 < fraction < 1 else f" ({fraction:.0%})"  # 99.8% is not all of it
    return f"{amount}{share} to spare" if room >= 0 else f"{amount}{share} over"


# -- the artifact table -----------------------------------------------------------------------------------------

def _artifact_table(report, numbers: dict[str, int]) -> str:
    columns = report.columns()
    prefix = name_prefix([a["name"] for a in report.artifacts])
    head = "<th data-key='number' title='the artifact number the plots label points with'>#</th>" + "".join(
        f"<th data-key='{e(_slug(c))}'{_align(c)}>{e(c)}</th>" for c in columns)
    body = []
    for a, r in report.rows():
        cells = [f"<td data-sort='{numbers[a['name']]}'>{numbers[a['name']]}</td>"]
        for c in columns:
            text = r[c]
            if c == "artifact":
                role = {"full": "full int8", "tried": "try"}.get(r["role"], r["role"])
                tag = f" <span class='tag'>{e(role)}</span>" if role else ""
                star = " <span class='star' title='recommended for this device'>★</span>" if r["best"] else ""
                cells.append(f"<td class='text' data-sort='{e(a['name'])}' title='{e(a['name'])}'><code>"
                             f"{e(a['name'][len(prefix):])}</code>{star}{tag}</td>")
                continue
            if c == "runtime":  # onnxruntime's provider names end alike: keep the word that differs
                cells.append(f"<td class='text long' title='{e(text)}'>{e(text.replace('ExecutionProvider', ''))}</td>")
                continue
            sort = _sort_value(c, a, text)
            attr = "" if sort is None else f" data-sort='{e(sort)}'"
            klass = _align(c, "fail" if c == "gates" and text == "FAIL" else "")
            cells.append(f"<td{attr}{klass}>{e(text)}</td>")
        klass = "best" if r["best"] else ("try" if r["role"] in ("full", "tried") else "")
        body.append(f"<tr class='{klass}' data-device='{e(a['device'])}' data-name='{e(a['name'])}'>"
                    + "".join(cells) + "</tr>")
    shown = f" Artifact names are shown without the common prefix <code>{e(prefix)}</code>." if prefix else ""
    return (
        "<section id='artifacts'><h2>Artifacts</h2>"
        f"<p class='hint'>One row per artifact and device. Click a column header to sort (again to reverse).{shown} "
        "★ marks the recommended artifact of each device; the words are defined in the <a href='#legend'>legend</a>."
        "</p><div class='wrap'><table id='artifact-table' class='sortable'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


TEXT_COLUMNS = ("device", "artifact", "format", "precision", "float layers", "runtime", "gates")
LONG_COLUMNS = ("float layers", "runtime")


def _align(column: str, *more: str) -> str:
    """The class of a column's cells: text columns are left-aligned, long ones wrap; numbers right-aligned."""
    classes = [*(["text"] if column in TEXT_COLUMNS else []), *(["long"] if column in LONG_COLUMNS else []),
               *(m for m in more if m)]
    return f" class='{' '.join(classes)}'" if classes else ""


def _slug(column: str) -> str:
    return column.replace(" ", "-").replace("/", "-")


def _sort_value(column: str, artifact: dict, text: str) -> str | None:
    if column in RAW:
        value = RAW[column](artifact)
        return "" if value is None else repr(float(value))
    if column in RATIOS:
        return text[:-1] if text.endswith("x") else ""
    return None


# -- plots --------------------------------------------------------------------------------------------------

def _plots(report, numbers: dict[str, int]) -> str:
    results = report.results
    prefix = name_prefix([a["name"] for a in report.artifacts])
    source = results["source"]["metrics"].get("accuracy")
    figures = []
    for device in results["devices"]:
        rows = [(a, r) for a, r in report.rows() if a["device"] == device]
        if not rows:
            continue
        points = [{"number": numbers[a["name"]], "precision": r["precision"], "format": a["format"],
                   "p50": a["latency"]["p50"], "accuracy": a["metrics"]["accuracy"], "bytes": a["bytes"]}
                  for a, r in rows]
        best = next((numbers[a["name"]] for a, r in rows if r["best"]), None)
        key = "<p class='key'>" + " · ".join(
            f"<b>{numbers[a['name']]}</b>&nbsp;{e(a['name'][len(prefix):])}"
            + (f" <span class='dim'>(float: {e(r['float layers'])})</span>" if a.get("accuracy_aware") else "")
            for a, r in rows) + "</p>"
        slug = _slug(device)
        figures.append(f"<h3>{e(device)}</h3><div class='row'>" + _figure(
            plots.accuracy_latency(device, points, results["gates"], source, best, f"acc-{slug}"),
            f"{device}: accuracy against p50. Shaded, hatched: fails a gate. The line joins the Pareto front "
            "(no other artifact is both faster and more accurate); the ring marks the recommended artifact.", key)
            + _figure(plots.bytes_latency(device, points, results["gates"], f"size-{slug}"),
                      f"{device}: file size against p50, both on log scales.", key) + "</div>")
        if any(a.get("lm") for a, _ in rows):  # decoder LMs: what a user of one reads, speed against perplexity
            lm_points = [{"number": numbers[a["name"]], "precision": r["precision"], "format": a["format"],
                          "tokens_per_s": (a.get("lm") or {}).get("decode_tokens_per_s", {}).get("p50"),
                          "perplexity": a["metrics"].get("perplexity")} for a, r in rows]
            figures.append(_figure(plots.perplexity_speed(device, lm_points, results["gates"], f"lm-{slug}"),
                                   f"{device}: perplexity (teacher-forced through each file's prefill and decode) "
                                   "against decode tokens/s. Shaded, hatched: fails a gate.", key))
        dist = [{"label": f"{numbers[a['name']]} {a['name'][len(prefix):]}", "precision": r["precision"],
                 "format": a["format"], "latency": a["latency"]} for a, r in rows]
        how = ("a box plot of the timed runs: the box spans the quartiles, the thick bar is the median, the "
               "whiskers reach 1.5 times the box, dots are the runs beyond" if plots.has_times(dist) else
               "results.json keeps the statistics, not every run: the box spans p50 (thick bar) to p90, the "
               "whiskers min to max, the thin bar is p99, the diamond the mean")
        figures.append(_figure(plots.latency_distribution(device, dist, f"lat-{slug}"),
                               f"{device}: latency of each artifact, {how}. Filled: TFLite; hollow: ONNX."))
    if results.get("models"):
        figures.append(_figure(plots.steps(results["models"], "steps"),
                               "Parameters and MACs (multiply-accumulates for one sample) of the source model and "
                               "of the model after each step; the label gives the share of zero weights."))
    return "<section id='plots'><h2>Plots</h2>" + "".join(figures) + "</section>"


def _figure(svg: str, caption: str, key: str = "") -> str:
    return f"<figure>{svg}<figcaption>{e(caption)}{key}</figcaption></figure>"


# -- per step, accuracy-aware quantization, tune, notes -------------------------------------------------------

def _steps(report) -> str:
    models = report.results.get("models") or []
    if not models:
        return ""
    perplexity = any(m.get("perplexity") is not None for m in models)
    head = "<th>#</th><th>stage</th><th>accuracy</th>" + ("<th>perplexity</th>" if perplexity else "") + (
        "<th>params</th><th>MACs</th><th>sparsity</th><th>notes</th>")
    rows = []
    for i, m in enumerate(models):
        cells = [str(i), e(m["stage"]), percent(m.get("accuracy"))]
        if perplexity:
            cells.append("-" if m.get("perplexity") is None else f"{m['perplexity']:.3f}")
        cells += [_int(m.get("params")), _int(m.get("macs")),
                  "-" if m.get("sparsity") is None else f"{m['sparsity']:.1%}", e("; ".join(stage_notes(m)))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<section id='steps'><h2>Models per step</h2><p class='hint'>The source model (0), then the model after "
            "each compression step, scored on the same test set as the artifacts.</p>"
            f"<table class='steps'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


def _profiles(report, numbers: dict[str, int]) -> str:
    """Per device, a bar of each artifact's time by op type, and its slowest ops with where they ran."""
    results = report.results
    prefix = name_prefix([a["name"] for a in report.artifacts])
    parts = []
    for device in results["devices"]:
        rows = [a for a in report.artifacts if a["device"] == device and a.get("profile")]
        if not rows:
            continue
        slug = _slug(device)
        bars = [{"label": f"{numbers[a['name']]} {a['name'][len(prefix):]}", "profile": a["profile"]} for a in rows]
        methods = "; ".join(sorted({a["profile"]["method"] for a in rows if a["profile"].get("method")}))
        parts.append(f"<h3>{e(device)}</h3>" + _figure(
            plots.op_time(device, bars, f"ops-{slug}"),
            f"{device}: each artifact's time by op type ({methods}); hatched: ops its delegate or first execution "
            "provider did not run."))
        body = []
        for a in rows:
            profile = a["profile"]
            if profile.get("error"):
                body.append(f"<tr><td>{numbers[a['name']]}</td><td>{e(a['name'])}</td>"
                            f"<td colspan='3'>{e(profile['error'])}</td></tr>")
                continue
            ops = "<br>".join(e(op_text(op)) for op in top_ops(profile))
            why = report.slower_than_fp32(a)
            if why:
                ops += f"<br><em>{e(why)}</em>"
            whole = "-" if profile.get("whole_us") is None else f"{profile['whole_us']:.1f}"
            body.append(f"<tr><td>{numbers[a['name']]}</td><td>{e(a['name'])}</td><td class='num'>{whole}</td>"
                        f"<td class='num'>{profile['total_us']:.1f}</td><td>{ops}</td></tr>")
        parts.append("<table class='ops'><thead><tr><th>#</th><th>artifact</th><th>whole run µs</th>"
                     "<th>ops µs</th><th>slowest ops</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>")
    if not parts:
        return ""
    return ("<section id='profile'><h2>Where the time goes</h2><p class='hint'>Each artifact timed op by op on each "
            "device: ONNX by onnxruntime's profiler, TFLite by timing each op cut out as a model of its own (each such "
            "time holds one invocation's fixed cost, so the ops add up to more than the whole run).</p>"
            + "".join(parts) + "</section>")


def _quantize(report) -> str:
    entries = report.results.get("quantize") or []
    if not entries:
        return ""
    parts = ["<section id='quantize'><h2>Accuracy-aware quantization</h2>"]
    for i, entry in enumerate(entries):
        parts.append(f"<p>{e(entry['summary'])}</p>")
        if entry.get("sensitivity"):
            parts.append(_figure(
                plots.sensitivity(entry, f"sens-{i}"),
                "Each layer's error after quantization, most sensitive first; hatched: kept in float in the final "
                "artifact. Every artifact tried is a row of the artifact table, with its float layers "
                "(sensitivity.md has the full ranking)."))
    return "".join(parts) + "</section>"


# -- the page `edgepress tune` writes -------------------------------------------------------------------------

def render_tune(tune: dict) -> str:
    """report.html of a tune (`tune`: tune.json's content): per device, the plot of every artifact measured with
    its Pareto front, the front as a table, and the recommendation."""
    budgets = tune["budgets"]
    said = ", ".join(f"{k} {v:g}" for k, v in budgets.items() if v is not None) or "none"
    body = [f"<header><h1>edgepress tune</h1><p class='meta'>{len(tune['trials'])} trials in "
            f"{tune['duration_s']:.0f} s; source accuracy {percent(tune['source']['accuracy'])}; budgets: {e(said)}. "
            f"Created {e(tune.get('created', '?'))}.</p></header>"]
    for device, front in tune["pareto"].items():
        points = [p for t in tune["trials"] for p in t.get("rows", []) if p["device"] == device]
        points += [p for p in tune["source"]["rows"] if p["device"] == device]
        best = tune["best"].get(device)
        rows = []
        for p in front:
            star = " ★" if best and (p["trial"], p["artifact"]) == (best["trial"], best["artifact"]) else ""
            rows.append(f"<tr><td>{'source' if p['trial'] is None else p['trial']}</td><td>{e(p['artifact'])}{star}"
                        f"</td><td>{percent(p['accuracy'])}</td><td>{or_dash(p['p50_ms'], '{:.3f}')}</td>"
                        f"<td>{p['bytes']:,}</td><td>{'yes' if p['passed'] else 'no'}</td></tr>")
        if best:
            verdict = f"Recommended: trial {best['trial']}, {e(best['artifact'])} (reproduce it: {e(best['recipe'])})."
        elif device in tune["closest"]:
            c = tune["closest"][device]
            verdict = f"No artifact within the budgets; the closest: trial {c['trial']}, {e(c['artifact'])}."
        else:
            verdict = "Nothing was measured on this device."
        body.append(
            f"<section><h2>{e(device)}</h2><p>{verdict}</p>"
            + _figure(plots.tune_front(device, points, front, best, budgets, tune["source"]["accuracy"],
                                       f"tune-{device}"),
                      "Faded: artifacts another beats on accuracy, p50 and bytes at once; full colour: the Pareto "
                      "front over those three, its accuracy-latency envelope joined; ringed: the recommendation.")
            + "<table><thead><tr><th>trial</th><th>artifact</th><th>accuracy</th><th>p50 ms</th><th>bytes</th>"
              "<th>within the budgets</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>")
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>edgepress tune</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _notes(report) -> str:
    results = report.results
    items = [*report.notes(), *(f"Across devices: {across_text(entry)}" for entry in results.get("across_devices", [])),
             *(f"Sparse tensors: {n}" for n in report.sparse_notes()),
             *(f"Warning: {w}" for w in report.warnings())]
    data = results["data"]
    env = results["environment"]
    lines = "".join(f"<li>{e(n)}</li>" for n in items)
    return (
        "<section id='notes'><h2>Notes</h2>" + (f"<ul>{lines}</ul>" if lines else "<p>Nothing left out.</p>")
        + f"<p>Data: {e(data['dataset'])}, {data['train_samples']} training, {data['test_samples']} test and "
        f"{data['calibration_samples']} calibration samples. Measured with " + e(", ".join(
            f"{k} {v}" for k, v in env.items() if v)) + ".</p>"
        + "<details><summary>The recipe, as run</summary><pre>"
        + e(json.dumps(results["recipe"], indent=2)) + "</pre></details></section>"
    )


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


LEGEND = """<section id='legend'><h2>Legend</h2><dl>
<dt>accuracy</dt><dd>Top-1 accuracy of the artifact on the test set, measured on the device.</dd>
<dt>drop</dt><dd>Accuracy drop from the source model (the model the run started from, before any step), in
percentage points: source accuracy minus the artifact's. A negative drop is an improvement and reads as a gain:
<q>+0.28 pt gain</q>. The gate <code>max_accuracy_drop</code> limits it. An accuracy-aware export's budget
(<code>quantize_max_accuracy_drop</code>) is the drop from the exported float model instead.</dd>
<dt>agreement</dt><dd>Share of the test samples on which the artifact's top-1 prediction, on the device, equals the
source model's top-1 prediction. Not the manifest's <code>check</code> (<code>artifacts/&lt;file&gt;.json</code>):
that is the top-1 agreement with the Keras model the file was exported from (after the steps), on
<code>data.check_samples</code> test samples, right after export.</dd>
<dt>speed-up vs fp32</dt><dd>p50 of the fp32 artifact of the same format on the same device, divided by this
artifact's p50: above 1.00x is faster. <q>-</q> when the run has no fp32 of that format.</dd>
<dt>size vs fp32</dt><dd>This artifact's bytes over the bytes of the fp32 artifact of the same format.</dd>
<dt>p50 ms, p90 ms</dt><dd>Median and 90th percentile of the timed single-sample (batch 1) runs on the device,
after the warm-up runs.</dd>
<dt>gates</dt><dd><q>pass</q> when the artifact meets every gate on this device. The recommended artifact
(★) is, per device, the fastest (p50) that passes; ties go to the smaller file.</dd>
<dt>float layers</dt><dd>For accuracy-aware quantization: the layers a try kept in float (<q>none</q>: fully
int8). Tries other than the final one are reported, not recommended.</dd>
<dt>int8 MACs</dt><dd>Share of the model's multiply-accumulates that the runtime runs in integer kernels, read
from the ops the file really executes (for ONNX, the graph onnxruntime optimizes): a dequantize before a float
kernel does not count, nor does a dynamic-range (hybrid) op, nor one with 16-bit activations (int16 MACs, shown
when a file has any).</dd>
</dl></section>"""

CSS = """
:root{--fg:#1a1a1a;--dim:#5a5a5a;--line:#d0d0d0;--pass:#006d4f;--fail:#b33b00;--best:#fff4d6}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;color:var(--fg);
 max-width:1400px;margin:0 auto;padding:12px 20px 40px}
h1{font-size:1.45em;margin:.2em 0}h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid var(--line)}
h3{font-size:1.05em;margin:0 0 .3em}.meta,.hint,.dim,figcaption{color:var(--dim)}.meta{margin:.2em 0}
code{font:0.92em ui-monospace,"DejaVu Sans Mono",monospace}
.verdict{font-size:.8em;padding:1px 8px;border-radius:3px;color:#fff;vertical-align:middle}
.verdict.passed{background:var(--pass)}.verdict.failed{background:var(--fail)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:10px}
.card{border:1px solid var(--line);border-left:6px solid var(--pass);padding:8px 12px;border-radius:3px}
.card.fail{border-left:6px dashed var(--fail)}.card .why{margin:.2em 0 .5em}
.star{color:#9a6a00}
table{border-collapse:collapse;font-size:12.5px}
th,td{padding:3px 5px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0;white-space:normal;vertical-align:bottom}
td.text,th.text{text-align:left}td.long{white-space:normal;min-width:7em;max-width:13em;font-size:.92em}
table.gates{font-size:12.5px;width:100%}table.gates td,table.gates th{text-align:left;white-space:normal}
table.steps td:nth-child(-n+2),table.steps th:nth-child(-n+2){text-align:left}
table.steps td:last-child{text-align:left;white-space:normal}
table.ops td:nth-child(2),table.ops td:last-child{text-align:left}table.ops td:last-child{white-space:normal}
tr.pass td:nth-child(2){color:var(--pass)}tr.fail td:nth-child(2),td.fail{color:var(--fail);font-weight:600}
tr.best td{background:var(--best);font-weight:600}tr.try td{color:#444}
.tag{font-size:.78em;border:1px solid var(--line);border-radius:3px;padding:0 4px;color:var(--dim);font-weight:400}
.wrap{overflow-x:auto;max-width:100%}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \\2195";color:#aaa;font-size:.8em}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";color:var(--fg)}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";color:var(--fg)}
.row{display:grid;grid-template-columns:repeat(auto-fit,minmax(760px,1fr));gap:0 18px}
figure{margin:14px 0 22px;break-inside:avoid}svg.plot{max-width:100%;height:auto;display:block}
#plots>figure,.row>figure{max-width:980px}
figcaption{font-size:13px;max-width:900px}.key{margin:.3em 0 0;font-size:12.5px;color:var(--fg)}
dt{font-weight:600;margin-top:.4em}dd{margin-left:1.2em}pre{font-size:12px;overflow-x:auto}
@media print{
 body{max-width:none;padding:0;font-size:11px}table{font-size:9px}th{position:static}
 .wrap{overflow:visible}table.sortable th::after{content:""}.hint{display:none}
 h2{break-after:avoid}#plots,#legend{break-before:page}details{display:none}
 tr.best td{background:none;border-bottom:2px solid #000}
}
"""

# Sort a table's rows by the clicked column: by data-sort (a raw number) when the cell has one, else by its text;
# cells without a value ("-") go last either way. Clicking again reverses.
SCRIPT = """
(function(){
  function key(cell){
    var v = cell.hasAttribute('data-sort') ? cell.getAttribute('data-sort') : cell.textContent.trim();
    if (v === '' || v === '-') return null;
    var n = Number(v);
    return isNaN(n) ? v : n;
  }
  function sortBy(table, col, th){
    var ascending = th.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(h){ h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null || y === null) return (x === null) - (y === null);
      var c = (typeof x === 'number' && typeof y === 'number') ? x - y
            : String(x).localeCompare(String(y), undefined, {numeric: true});
      return ascending ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, col){
      th.tabIndex = 0;
      th.addEventListener('click', function(){ sortBy(table, col, th); });
      th.addEventListener('keydown', function(ev){
        if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
})();
"""
