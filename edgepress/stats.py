"""Honest comparisons of measured latencies: a difference counts only beyond the measurement's noise.

Each artifact row carries its p50 and the 95% confidence interval of that p50 (`latency.p50_ci`,
from the runner's bootstrap). `faster(a, b)` holds only when a's interval lies wholly below b's;
overlapping intervals are a tie, and the recommendation then prefers the smaller file, then the
more accurate artifact (`rank_best`). Pure functions over the rows of results.json.
"""

from __future__ import annotations


def p50_interval(row: dict) -> tuple[float, float] | None:
    """(low, high) of the row's p50 interval; a row without one (an old results.json) has only its point, None
    when it has no p50 at all."""
    latency = row.get("latency") or {}
    p50 = latency.get("p50")
    if p50 is None:
        return None
    interval = latency.get("p50_ci")
    return (float(interval[0]), float(interval[1])) if interval else (float(p50), float(p50))


def faster(a: dict, b: dict) -> bool:
    """True when row `a` is faster than row `b` beyond doubt: a's p50 interval lies wholly below b's."""
    ia, ib = p50_interval(a), p50_interval(b)
    return ia is not None and ib is not None and ia[1] < ib[0]


def speed_verdict(a: dict, b: dict) -> str:
    """'faster', 'slower' or 'tie' for row `a` against row `b` ('unknown' when either has no p50)."""
    if p50_interval(a) is None or p50_interval(b) is None:
        return "unknown"
    return "faster" if faster(a, b) else "slower" if faster(b, a) else "tie"


def rank_best(rows: list[dict]) -> dict | None:
    """The row to recommend among `rows` (rows that met their gates, on one device).

    The fastest by p50, unless its interval overlaps others': then among it and every row it is not
    faster than (the tied-fastest), the smallest file, then the most accurate, then the lowest p50.
    """
    timed = [r for r in rows if p50_interval(r) is not None]
    if not timed:
        return None
    fastest = min(timed, key=lambda r: r["latency"]["p50"])
    tied = [r for r in timed if not faster(fastest, r)]

    def accuracy(r: dict) -> float:
        value = (r.get("metrics") or {}).get("accuracy")
        return -1.0 if value is None else value

    return min(tied, key=lambda r: (r["bytes"], -accuracy(r), r["latency"]["p50"], r["name"]))


def tied_with(best: dict, rows: list[dict]) -> list[dict]:
    """The rows of `rows` (but `best`) whose p50 interval overlaps `best`'s: as fast, within the noise."""
    return [r for r in rows if r is not best and p50_interval(r) is not None and speed_verdict(r, best) == "tie"]


def ratio_interval(numerator: dict, denominator: dict) -> tuple[float, float, float] | None:
    """(point, low, high) of numerator p50 / denominator p50, the interval conservatively from both intervals:
    [num low / den high, num high / den low]. A speed-up of `row` over `base` is ratio_interval(base, row)."""
    num, den = p50_interval(numerator), p50_interval(denominator)
    if num is None or den is None or den[0] <= 0 or denominator["latency"]["p50"] <= 0:
        return None
    return numerator["latency"]["p50"] / denominator["latency"]["p50"], num[0] / den[1], num[1] / den[0]


def busy_warnings(results: dict) -> list[str]:
    """One warning per device whose load average, before or after timing, exceeded its cores: other work competed
    with the measurement, so its latencies are slower and noisier than on an idle machine."""
    warnings, seen = [], set()
    for row in results.get("artifacts", []):
        host = row.get("host") or {}
        cores, loads = host.get("cores"), [host.get("load_before"), host.get("load_after")]
        if row["device"] in seen or not cores or not any(v is not None and v > cores for v in loads):
            continue
        seen.add(row["device"])
        shown = " / ".join("-" if v is None else f"{v:.1f}" for v in loads)
        warnings.append(f"{row['device']} was busy while measuring: load average {shown} (before / after) on "
                        f"{cores} cores; its latencies are slower and noisier than on an idle machine.")
    return warnings


def tie_notes(results: dict) -> list[str]:
    """Per device, a sentence naming the artifacts that tie with the recommended one (overlapping p50 intervals)
    and why it was chosen among them."""
    notes = []
    for device, name in (results.get("best") or {}).items():
        rows = [r for r in results["artifacts"] if r["device"] == device and r.get("passed")]
        best = next((r for r in rows if r["name"] == name), None)
        tied = [] if best is None else tied_with(best, rows)
        if tied:
            names = ", ".join(r["name"] for r in sorted(tied, key=lambda r: r["latency"]["p50"]))
            notes.append(f"On {device}, {name} ties on speed with {names} (their p50 intervals overlap): among tied "
                         "artifacts the smaller file is recommended, then the more accurate.")
    return notes
