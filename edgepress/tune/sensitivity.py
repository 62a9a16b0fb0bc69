"""Per-layer sensitivity of a model to structured pruning, measured once per tune: each group of layers that
structured_prune removes channels from together (a layer, or layers tied by Add / Concatenate) has half its
channels removed alone, without fine-tuning, and the accuracy drop on the test data is its sensitivity.

A trial's `layer_guidance` (0: one ratio everywhere) then moves the ratio of each group away from the global one:
less pruning where a group is sensitive, more where it is not (see `Space.steps`).
"""

from __future__ import annotations

from pathlib import Path

PROBE_RATIO = 0.5


def measure_sensitivity(model_path: str, data: dict, samples: int = 500) -> dict:
    """{"ratio", "samples", "groups": [{"layers": [...], "drop": accuracy drop}]} for the model at `model_path`
    on the recipe's `data` section (its last `samples` test samples)."""
    from edgepress.compress.structured_prune import StructuredPruneConfig, plan, remove_channels
    from edgepress.models import training
    from edgepress.models.datasets import load_dataset
    from edgepress.models.loading import load_model

    model = load_model(model_path)
    loaded = load_dataset(data["dataset"], data.get("path"), data.get("train_size"), data.get("test_size"),
                          data.get("seed", 0)).fit_to(tuple(model.input_shape[1:]))
    x, y = loaded.x_test[-samples:], loaded.y_test[-samples:]
    base = training.accuracy(training.predict(model, x), y)
    widths = plan(model, StructuredPruneConfig(ratio=0.0)).widths
    groups, seen = [], set()
    for name, (before, _) in widths.items():
        if name in seen or before < 2:
            continue
        config = StructuredPruneConfig(ratio=0.0, layers={name: PROBE_RATIO}, fine_tune_epochs=0)
        try:
            cut = plan(model, config)
        except Exception:  # a layer structured_prune refuses to cut alone: leave it at the global ratio
            continue
        members = sorted(n for n, (a, b) in cut.widths.items() if a != b)
        if not members:
            continue
        seen.update(members)
        accuracy = training.accuracy(training.predict(remove_channels(model, cut), x), y)
        groups.append({"layers": members, "drop": round(base - accuracy, 6),
                       "min_width": min(widths[n][0] for n in members)})
    return {"ratio": PROBE_RATIO, "samples": len(x), "accuracy": base, "groups": groups}


def guided_ratios(ratio: float, guidance: float, sensitivity: dict | None) -> dict[str, float] | None:
    """Per-layer ratios around `ratio`: each group's moves by up to `guidance` x `ratio`, down for the most
    sensitive group, up for the least (their mean stays near `ratio`); None when there is nothing to guide."""
    groups = (sensitivity or {}).get("groups") or []
    drops = [g["drop"] for g in groups]
    if not guidance or len(groups) < 2 or max(drops) == min(drops):
        return None
    mean, span = sum(drops) / len(drops), max(drops) - min(drops)
    layers = {}
    for g in groups:
        shift = guidance * (mean - g["drop"]) / span  # in [-guidance, guidance]
        most = (g["min_width"] - 1) / g["min_width"]  # every layer keeps a channel
        value = min(most, 0.95, max(0.0, ratio * (1 + shift)))
        layers.update({name: round(value, 3) for name in g["layers"]})
    return layers


def load_or_measure(run_dir: Path, model_path: str, data: dict, progress) -> dict:
    """The sensitivity of the tune's source, measured once per run directory (source/sensitivity.json)."""
    import json

    from edgepress import files

    path = run_dir / "source" / "sensitivity.json"
    if path.exists():
        return json.loads(path.read_text())
    progress.update("measuring each layer's sensitivity to structured pruning")
    result = measure_sensitivity(model_path, data)
    files.write_text(path, json.dumps(result, indent=1) + "\n")
    ranked = sorted(result["groups"], key=lambda g: -g["drop"])
    progress.done("sensitivity (half the channels removed, no fine-tuning): " + ", ".join(
        f"{'+'.join(g['layers'])} {g['drop'] * 100:+.1f} pt" for g in ranked[:8]) + (" ..." if len(ranked) > 8 else ""))
    return result
