"""How far two runs of the same recipe agree, and what the runner's timing loop costs over a bare invoke() loop.

    .venv/bin/python benchmarks/reproducibility.py       # the demo recipe: about 3-4 minutes on 2 cores, idle

1. Runs the same recipe twice (default: edgepress's demo, `edgepress/demo.yaml`: the seed CNN on scikit-learn's
   digits, pruned, every precision exported), each in its own run directory, and compares each (device,
   artifact) of the two: accuracy must agree exactly (same seeds, same data); the p50s by how much they differ
   (|p50_2 / p50_1 - 1|) and whether their 95% intervals overlap (edgepress calls that a tie). Then
   `edgepress compare` of the two with its default limits, on the stored p50s and with the files timed again.
2. Times every .tflite and .onnx artifact of the first run in this process two ways, in alternating blocks so
   that load falls on both alike: edgepress's timing loop (runner.time_interleaved on Runtime.timer, what
   the runner does on a device) and a bare loop written by hand around the runtime (set_tensor, invoke,
   get_tensor; or session.run). The overhead is the loop's p50 over the bare p50, minus one; the goal is at
   most 3%. It is taken pairwise: the median, over adjacent pairs of blocks, of the loop block's p50 over the
   bare block's (a change of the machine's speed during the measurement then falls on both sides of a pair; on
   the 2 ms int16x8 model, 50-run blocks and one pooled p50 per loop gave +7% in one run and +40% in another);
   the pooled ratio is shown beside it.
3. Writes the "## reproducibility" section of benchmarks/RESULTS.md (other sections are kept), unless
   --no-write. Options: --recipe FILE, --work DIR, --runs N, --blocks N, --results FILE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import edgepress  # noqa: E402, I001  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from compression import say, write_section  # noqa: E402, I001  (benchmarks/compression.py, beside this script)

OVERHEAD_GOAL = 0.03


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "edgepress" / "demo.yaml"))
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-reproducibility"), help="where runs are written")
    parser.add_argument("--runs", type=int, default=2000, help="timed runs per loop per artifact (overhead)")
    parser.add_argument("--blocks", type=int, default=200, help="alternating blocks the runs are split into")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = Path(args.work)
    recipe = edgepress.Recipe.from_yaml(args.recipe)

    reports = []
    for i in (1, 2):
        say(f"run {i} of {recipe.name}")
        reports.append(edgepress.run(recipe, work / f"run{i}"))
    agreement = agree(reports[0].results, reports[1].results)
    say(f"accuracy equal in {agreement['accuracy_equal']}/{agreement['rows']} rows; p50 differs by "
        f"{agreement['p50_median_difference']:.1%} (median), {agreement['p50_max_difference']:.1%} (max)")
    verdicts = compare_verdicts(work / "run1", work / "run2")
    say(f"edgepress compare run1 run2: {verdicts['stored_regressions']} regression(s) on the stored p50s, "
        f"{verdicts['retimed_regressions']} with the files timed again together")

    overhead = []
    for row in reports[0].results["artifacts"]:
        if row["device"] != "x86-host":
            continue
        measured = loop_overhead(row["path"], args.runs, args.blocks)
        overhead.append({"name": row["name"], **measured})
        say(f"{row['name']}: bare p50 {measured['bare_p50']:.4f} ms, runner loop {measured['loop_p50']:.4f} ms, "
            f"overhead {measured['overhead']:+.2%}")
    section = render(recipe.name, agreement, verdicts, overhead, reports[0].results, time.perf_counter() - started,
                     args)
    if args.no_write:
        print(section)
    else:
        write_section(Path(args.results), "reproducibility", section)
        say(f"wrote the reproducibility section of {args.results}")
    return {"agreement": agreement, "compare": verdicts, "overhead": overhead}


def agree(first: dict, second: dict) -> dict:
    """Per (device, artifact) in both runs: accuracy equal exactly, the p50's relative difference, intervals tie."""
    from edgepress.stats import speed_verdict

    other = {(r["device"], r["name"]): r for r in second["artifacts"]}
    rows = []
    for a in first["artifacts"]:
        b = other.get((a["device"], a["name"]))
        if b is None or a["latency"]["p50"] is None or b["latency"]["p50"] is None:
            continue
        rows.append({
            "device": a["device"], "name": a["name"],
            "accuracy": (a["metrics"]["accuracy"], b["metrics"]["accuracy"]),
            "accuracy_equal": a["metrics"]["accuracy"] == b["metrics"]["accuracy"],
            "p50": (a["latency"]["p50"], b["latency"]["p50"]),
            "p50_difference": abs(b["latency"]["p50"] / a["latency"]["p50"] - 1),
            "tie": speed_verdict(a, b) == "tie",
        })
    differences = [r["p50_difference"] for r in rows] or [float("nan")]
    return {
        "rows": len(rows), "accuracy_equal": sum(r["accuracy_equal"] for r in rows),
        "ties": sum(r["tie"] for r in rows), "p50_median_difference": statistics.median(differences),
        "p50_max_difference": max(differences), "per_artifact": rows,
    }


def compare_verdicts(old: Path, new: Path) -> dict:
    """`edgepress compare` of the two runs with its default limits, on the stored p50s and with the files timed
    again together (its default): the regressions each reports, and each row's change."""
    from edgepress.compare import compare_files
    from edgepress.specs.baseline import BaselineSpec

    stored = compare_files(old, new, BaselineSpec(path=str(old), retime=False))
    retimed = compare_files(old, new, BaselineSpec(path=str(old)))
    rows = {(r.device, r.artifact): {"stored": r} for r in stored.rows}
    for r in retimed.rows:
        rows[(r.device, r.artifact)]["retimed"] = r
    return {"stored_regressions": len(stored.regressions()), "retimed_regressions": len(retimed.regressions()),
            "rows": rows}


def loop_overhead(path: str, runs: int, blocks: int) -> dict:
    """p50 of edgepress's timing loop and of a bare hand-written loop on the same model and input, alternating."""
    from edgepress.deploy import runner

    model = runner.open_model(path)
    x = model.prepare(runner._random_input(model, 1))
    bare = _bare_call(model, x)
    timed = model.timer(x)
    for _ in range(20):  # warm up both paths
        bare()
        timed()
    per_block = max(1, runs // blocks)
    bare_blocks: list[list[float]] = []
    loop_blocks: list[list[float]] = []
    perf = time.perf_counter
    for i in range(blocks):
        for which in ("bare", "loop") if i % 2 == 0 else ("loop", "bare"):  # either goes first in turn
            if which == "loop":
                (block,), _ = runner.time_interleaved([timed], per_block)
                loop_blocks.append(block)
                continue
            block = []
            for _ in range(per_block):  # the bare loop, inlined: nothing between the clock reads but the runtime
                start = perf()
                bare()
                block.append((perf() - start) * 1000.0)
            bare_blocks.append(block)
    bare_p50 = statistics.median(t for b in bare_blocks for t in b)
    loop_p50 = statistics.median(t for b in loop_blocks for t in b)
    paired = statistics.median(statistics.median(lb) / statistics.median(bb)
                               for lb, bb in zip(loop_blocks, bare_blocks, strict=True))
    return {"bare_p50": bare_p50, "loop_p50": loop_p50, "overhead": paired - 1,
            "pooled_overhead": loop_p50 / bare_p50 - 1, "runs": per_block * blocks}


def _bare_call(model, x):
    """The runtime called directly, as a hand-written benchmark would (no edgepress code in the call)."""
    from edgepress.deploy.runner import TFLiteRuntime

    if isinstance(model, TFLiteRuntime):
        interpreter, input_index = model._interpreter, model._input["index"]
        output_index = model._output["index"]

        def call():
            interpreter.set_tensor(input_index, x)
            interpreter.invoke()
            return interpreter.get_tensor(output_index)

        return call
    session, feed, outputs = model._session, {model._input_name: x}, [model._output_name]
    return lambda: session.run(outputs, feed)


def render(name: str, agreement: dict, verdicts: dict, overhead: list[dict], results: dict, seconds: float,
           args) -> str:
    env = results["environment"]
    host = next((r.get("host") or {} for r in results["artifacts"]), {})
    lines = [
        "## reproducibility",
        "",
        f"Made by `benchmarks/reproducibility.py` on {dt.date.today().isoformat()} in {seconds / 60:.1f} min: recipe "
        f"`{name}` run twice; then {args.runs} timed runs per loop per artifact in {args.blocks} alternating blocks. "
        f"{env['cpu']}, {host.get('cores', os.cpu_count())} cores (load average {_load(host.get('load_before'))} "
        f"when the first run's timing began), LiteRT {env.get('ai-edge-litert')}, "
        f"onnxruntime {env.get('onnxruntime')}, 1 thread, batch 1.",
        "",
        f"Two runs: accuracy identical for {agreement['accuracy_equal']} of {agreement['rows']} artifacts; p50 "
        f"differs by {agreement['p50_median_difference']:.1%} (median) and at most "
        f"{agreement['p50_max_difference']:.1%}; the two 95% intervals overlap (a tie) for {agreement['ties']} of "
        f"{agreement['rows']}.",
        "",
        f"`edgepress compare run1 run2` (default limits: p50 +10% and significant): "
        f"{verdicts['stored_regressions']} regression(s) when it compares the two runs' stored p50s "
        f"(`--no-retime`), {verdicts['retimed_regressions']} when it times both runs' files again, interleaved in "
        "one process (its default).",
        "",
        "| artifact | accuracy run 1 / run 2 | p50 ms run 1 / run 2 | difference | intervals | compare, stored "
        "| compare, timed again: p50 change |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in agreement["per_artifact"]:
        pair = verdicts["rows"].get((r["device"], r["name"]), {})
        lines.append(f"| {r['name']} | {r['accuracy'][0]:.2%} / {r['accuracy'][1]:.2%} | {r['p50'][0]:.4f} / "
                     f"{r['p50'][1]:.4f} | {r['p50_difference']:.1%} | {'tie' if r['tie'] else 'differ'} | "
                     f"{_verdict(pair.get('stored'))} | {_verdict(pair.get('retimed'))} |")
    worst = max((o["overhead"] for o in overhead), default=float("nan"))
    lines += [
        "",
        f"Runner timing loop against a bare runtime loop (goal: at most {OVERHEAD_GOAL:.0%} on p50): worst "
        f"{worst:+.2%}, {'met' if worst <= OVERHEAD_GOAL else 'NOT met'}.",
        "",
        "Overhead: the median over adjacent block pairs of the loop block's p50 over the bare block's, minus one "
        "(a change of the machine's speed falls on both sides of a pair); pooled: the ratio of the two loops' p50s "
        "over all their runs.",
        "",
        "| artifact | bare p50 ms | runner loop p50 ms | overhead (paired) | pooled |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {o['name']} | {o['bare_p50']:.4f} | {o['loop_p50']:.4f} | {o['overhead']:+.2%} | "
              f"{o['pooled_overhead']:+.2%} |" for o in overhead]
    return "\n".join(lines) + "\n"


def _verdict(row) -> str:
    if row is None or row.p50_change is None:
        return "-"
    change = f"{row.p50_change:+.1%}" + ("" if row.p50_significant else " (tie)")
    return change + (" **regression**" if "p50" in row.regressions else ", ok")


def _load(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
