"""What a tune writes: tune.json (every trial), the Pareto front per device (report.html with a plot per device)
and best-<device>.yaml (a plain recipe that reproduces the recommended artifact).

tune.json, schema_version 1:
    schema_version, created, duration_s, objectives, budgets {max_accuracy_drop, max_p50_ms, max_bytes} (a decoder
    LM's: {max_perplexity, min_decode_tokens_per_s, max_bytes}),
    space {ratio, ratio_step, fine_tune_epochs, distill, round_to, exports {device: [format:precision]}, aware_drop,
           float_ops (the kinds of ops the tflite:int8-float-ops choices keep float, when offered)},
    source {accuracy, params, macs, rows [float baseline rows: artifact, device, accuracy, p50_ms, bytes]},
    trials [{number, status (complete, pruned, refused, failed, cached, interrupted), reason, params, key, duration_s,
             run_dir, worker (host:pid that ran it), params_count, macs, model_accuracy,
             chosen {device: {artifact, accuracy, p50_ms, bytes} of the export chosen for it},
             models [{stage, accuracy, params, macs}], devices {name: error or null},
             rows [{artifact, device, format, precision, accuracy, accuracy_drop, p50_ms, bytes, gzip_bytes, passed,
                    and for a decoder LM perplexity and decode_tokens_per_s}]}],
    pareto {device: [rows]}, best {device: row + {trial, recipe} or null},
    (with tune.validation_size: validation {size, train, test}, the rows' accuracies are on the validation split,
     and best[device] also has test_accuracy and test_run, its pick measured once on the test split),
    stopped_exports {device: {format:precision: why}} (no longer exported: slower than fp32 in every trial),
    closest {device: row + {misses}} for a device with no artifact within the budgets, passed
"""

from __future__ import annotations

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
    """A report row as a tune point: what tune.json, the Pareto front and the plot use (a decoder LM's also has
    its perplexity and decode tokens/s)."""
    return {"trial": trial, "artifact": row["name"], "device": row["device"], "format": row["format"],
            "precision": row["precision"], "accuracy": row["metrics"].get("accuracy"),
            "accuracy_drop": row["metrics"].get("accuracy_drop"), "p50_ms": row["latency"].get("p50"),
            "bytes": row["bytes"], "gzip_bytes": row.get("gzip_bytes"), "passed": row.get("passed"),
            "role": (row.get("accuracy_aware") or {}).get("role"),
            **({"perplexity": row["metrics"].get("perplexity"),
                "decode_tokens_per_s": row["lm"]["decode_tokens_per_s"]["p50"]} if row.get("lm") else {})}


def write_report(path, tune: dict) -> None:
    """report.html: per device, the plot of every artifact measured with its Pareto front, and the front as a table
    (edgepress/report_html.py, render_tune)."""
    from edgepress.report_html import render_tune

    files.write_text(path, render_tune(tune))
