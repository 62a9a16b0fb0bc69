"""The same artifact on two devices: where ARM's kernels and wheels give other answers than x86's.

    results["across_devices"] = across_devices(rows, budget)   # edgepress.api, from the rows with their predictions
    across_text(entry)                                         # one line of the report per entry

Each artifact measured on more than one device is compared, on the same test samples, with its row on the first
device that ran it (the reference, usually this machine): the share of samples where both devices predict the same
class, whether their outputs are the same to 4 decimals (the runner's output checksum), and how far the accuracy
moved. A move larger than the recipe's accuracy budget (gates.max_accuracy_drop; any move without one) is flagged.
Pure functions over the rows of results.json; imports nothing from edgepress.
"""

from __future__ import annotations


def across_devices(rows: list[dict], budget: float | None) -> list[dict]:
    """One entry per artifact and device other than the artifact's reference device (see the module doc):
    {artifact, reference, device, accuracy: {reference, device}, accuracy_change, agreement, same_outputs, flagged,
    error}. `rows` need `predictions` (top-1 per test sample) to compare predictions; a row the device could not
    run compares as an error."""
    by_artifact: dict[str, list[dict]] = {}
    for row in rows:
        by_artifact.setdefault(row["name"], []).append(row)
    entries = []
    for name, measured in by_artifact.items():
        if len(measured) < 2:
            continue
        reference = next((r for r in measured if not r.get("error")), measured[0])
        for other in measured:
            if other is reference:
                continue
            entries.append(_compare(name, reference, other, budget))
    return entries


def _compare(name: str, reference: dict, other: dict, budget: float | None) -> dict:
    before, after = reference["metrics"]["accuracy"], other["metrics"]["accuracy"]
    change = None if before is None or after is None else after - before
    ours, theirs = reference.get("predictions"), other.get("predictions")
    agreement = None
    if ours is not None and theirs is not None and len(ours) == len(theirs) and ours:
        agreement = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)
    checksums = reference.get("output_checksum"), other.get("output_checksum")
    same = None if None in checksums else checksums[0] == checksums[1]
    error = other.get("error") or reference.get("error")
    # Accuracies are fractions of the same samples: allow float rounding at the budget.
    flagged = change is not None and abs(change) > (budget or 0.0) + 1e-9
    return {"artifact": name, "reference": reference["device"], "device": other["device"],
            "accuracy": {reference["device"]: before, other["device"]: after}, "accuracy_change": change,
            "agreement": agreement, "same_outputs": same, "flagged": flagged, "budget": budget, "error": error}


def across_text(entry: dict) -> str:
    """`entry` in a sentence: "model_int8.tflite: rpi5-emulated vs x86-host: same outputs; accuracy 97.50% vs 97.50%
    (+0.00 pt), predictions agree on 100.00% of the samples"."""
    head = f"{entry['artifact']}: {entry['device']} vs {entry['reference']}"
    if entry["error"]:
        return f"{head}: not compared, it did not run on both: {entry['error']}"
    accuracy = entry["accuracy"]
    parts = [
        "same outputs (to 4 decimals)" if entry["same_outputs"] else
        "outputs differ" if entry["same_outputs"] is False else "outputs not compared",
        f"accuracy {_pct(accuracy[entry['device']])} vs {_pct(accuracy[entry['reference']])}"
        + ("" if entry["accuracy_change"] is None else f" ({entry['accuracy_change'] * 100:+.2f} pt)"),
    ]
    if entry["agreement"] is not None:
        parts.append(f"top-1 predictions agree on {entry['agreement']:.2%} of the samples")
    text = f"{head}: " + ", ".join(parts)
    if entry["flagged"]:
        limit = "any change (no max_accuracy_drop)" if not entry["budget"] else f"{entry['budget'] * 100:.2f} pt"
        text += f". FLAGGED: the accuracy moved more than the budget, {limit}"
    return text


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"
