"""How values read in reports, messages and progress lines: one helper per kind of value, used by every view.

Pure formatting of plain values and results rows; imports nothing.
"""

from __future__ import annotations


def or_dash(value: float | None, template: str) -> str:
    """`value` formatted by `template` ("{:.2%}"), or "-" when it was not measured."""
    return "-" if value is None else template.format(value)


def percent(value: float | None) -> str:
    """An accuracy for progress lines and messages: '97.85%', or '-' when not measured."""
    return "-" if value is None else f"{value:.2%}"


def ms(value: float | None) -> str:
    """A p50 in ms for progress lines and messages: '0.123', or '-' when not measured."""
    return "-" if value is None else f"{value:.3f}"


def drop_text(drop: float | None) -> str:
    """An accuracy drop (a fraction) in percentage points; a gain reads as a gain: "0.50 pt", "+0.28 pt gain"."""
    if drop is None:
        return "-"
    points = round(drop * 100, 2) + 0.0  # + 0.0: -0.0 reads 0.00
    return f"+{-points:.2f} pt gain" if points < 0 else f"{points:.2f} pt"


def interval_text(latency: dict) -> str:
    """ ' [low, high]': a row's p50 95% confidence interval (ms), as every view shows it after the p50."""
    ci = latency.get("p50_ci")
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def float_layers_text(artifact: dict) -> str:
    """The layers an accuracy-aware try kept in float ("none": fully int8); "-" for any other artifact."""
    if not artifact.get("accuracy_aware"):
        return "-"
    return ", ".join(row["layer"] for row in artifact.get("float_layers", [])) or "none"


def stage_text(model: dict) -> str:
    """One model of the run: accuracy, size, work and sparsity (what was not measured is left out)."""
    sizes = [f"{model['params']:,} params"]
    if model.get("macs") is not None:
        sizes.append(f"{model['macs']:,} MACs")
    if model.get("sparsity") is not None:
        sizes.append(f"{model['sparsity']:.0%} sparse")
    perplexity = f", perplexity {model['perplexity']:.3f}" if model.get("perplexity") is not None else ""
    notes = "".join(f"; {note}" for note in stage_notes(model))
    return f"{model['stage']} {or_dash(model['accuracy'], '{:.2%}')}{perplexity} ({', '.join(sizes)}{notes})"


def stage_notes(model: dict) -> list[str]:
    """What a step measured besides its model (a distill step: the teacher and the student trained alone)."""
    distill = model.get("distill")
    if not distill:
        return []
    teacher = "the source model" if distill.get("teacher") == "source" else "teacher"
    notes = [f"student {distill['student']}, {teacher} {or_dash(distill['teacher_accuracy'], '{:.2%}')}"]
    if distill.get("scratch_accuracy") is not None:
        notes.append(f"same student without the teacher {distill['scratch_accuracy']:.2%}")
    return notes


def op_text(op: dict) -> str:
    """One op of a per-op profile: "CONV_2D seed_cnn/conv2d int8 -> int8 (integer, XNNPACK): 30.1 us, 38%"."""
    name = op.get("name") or ""
    # A TFLite op is named after its output tensor, fused ops' names joined by ';': the first says enough.
    short = name.split(";")[0].removesuffix(":0")
    short = short if len(short) <= 40 else "..." + short[-37:]
    dtypes = f"{op['in']} -> {op['out']}" if op.get("in") and op.get("out") else ""
    how = ", ".join(str(part) for part in (op.get("kind"), op.get("runs_on")) if part)
    timed = "not timed" if op.get("us") is None else f"{op['us']:.1f} us"
    share = f", {op['share']:.0%}" if op.get("share") is not None else ""
    head = " ".join(part for part in (op["op"], short, dtypes) if part)
    return head + (f" ({how})" if how else "") + f": {timed}{share}"


def top_ops(profile: dict, count: int = 5) -> list[dict]:
    """The `count` ops of a per-op profile that take the most time, slowest first."""
    return sorted((op for op in profile.get("ops", []) if op["us"] is not None), key=lambda op: -op["us"])[:count]


def profile_text(profile: dict, count: int = 3) -> str:
    """A per-op profile in a line: its slowest ops, then the share of each op type."""
    if profile.get("error"):
        return f"not profiled: {profile['error']}"
    ops = top_ops(profile, count)
    total = profile.get("total_us") or 0
    types = ", ".join(f"{op} {us / total:.0%}" for op, us in list(profile["by_type"].items())[:4]) if total else ""
    return "; ".join(op_text(op) for op in ops) + (f" (by op type: {types})" if types else "")

