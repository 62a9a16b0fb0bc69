"""Which artifacts give the same answers on ARM as on x86, and by how much the others differ.

    .venv/bin/python benchmarks/arm_vs_x86.py          # as root: it brings up the emulated arm64 board

Brings up the emulated 64-bit Raspberry Pi of the tests (tests/deploy/arm_board.py: Debian arm64 under qemu-user,
its own sshd, the aarch64 wheels pip gets there) and runs two recipes with `edgepress run --device x86-host --device
<board profile>`: the demo (the seed CNN on scikit-learn's digits, pruned 50%) and MobileNetV2 (alpha 0.35, the zoo's
`mobilenet_v2`, depthwise convolutions and ReLU6) on the same digits resized to 32x32x3. Every artifact of both is
measured on both devices on the same test samples; the `## ARM vs x86` section of benchmarks/RESULTS.md gets, per
artifact, whether the outputs are the same to 4 decimals, both accuracies, and the share of samples on which the
top-1 predictions agree (results.json's `across_devices`). Latency on the board is emulated and not reported.
Options: --work DIR (default runs/bench-arm), --results FILE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

MOBILENET = """\
name: digits_mobilenetv2
model: {zoo: mobilenet_v2, train_epochs: 8}
data: {dataset: digits, test_size: 360, calibration_samples: 200}
measure: {runs: 20, warmup: 2, profile: false}
gates: {max_accuracy_drop: 2%}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-arm"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    from compression import write_section  # noqa: I001  (benchmarks/compression.py, beside this script)

    from tests.deploy import arm_board

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "mobilenetv2.yaml").write_text(MOBILENET)
    recipes = {"seed CNN (the demo: `edgepress/demo.yaml`)": REPO / "edgepress" / "demo.yaml",
               "MobileNetV2 alpha 0.35 on digits at 32x32x3": work / "mobilenetv2.yaml"}
    started = time.perf_counter()
    root = arm_board.build()
    tables = []
    with arm_board.Board(root, work / "board") as board:
        for title, recipe in recipes.items():
            out = work / recipe.stem
            say(f"{title}: edgepress run on x86-host and rpi5-emulated")
            subprocess.run([str(Path(sys.executable).parent / "edgepress"), "run", str(recipe), "-o", str(out),
                            "--device", "x86-host", "--device", str(board.profile)], check=False)
            tables.append(_table(title, json.loads((out / "results.json").read_text())))
    minutes = (time.perf_counter() - started) / 60
    body = (f"## ARM vs x86\n\nMade by `benchmarks/arm_vs_x86.py` on {dt.date.today()} ({minutes:.1f} min). Each "
            "artifact measured on this machine (x86-64, ai-edge-litert and onnxruntime from the host venv) and on the "
            "emulated Raspberry Pi (`rpi5-emulated`: Debian bookworm arm64 under qemu-user, Python 3.11, the aarch64 "
            "wheels pip installs there), on the same test samples. `same outputs`: the float32 outputs rounded to 4 "
            "decimals hash alike (the runner's output checksum); `agreement`: share of samples with the same top-1 "
            "class on both. Latency there is emulated and left out.\n\n" + "\n\n".join(tables))
    write_section(Path(args.results), "ARM vs x86", body)
    say(f"wrote the ARM vs x86 section of {args.results}")


def _table(title: str, results: dict) -> str:
    rows = {(a["device"], a["name"]): a for a in results["artifacts"]}
    lines = [f"### {title}", "", "| artifact | runtime on ARM | same outputs | accuracy x86 | accuracy ARM | change | "
             "agreement |", "|---|---|---|---|---|---|---|"]
    for e in results.get("across_devices", []):
        arm = rows[(e["device"], e["artifact"])]
        runtime = f"{arm['runtime']['name']} {arm['runtime']['version'] or ''}".strip()
        if e["error"]:
            lines.append(f"| {e['artifact']} | {runtime} | did not run: {e['error']} | | | | |")
            continue
        change = "-" if e["accuracy_change"] is None else f"{e['accuracy_change'] * 100:+.2f} pt"
        lines.append(f"| {e['artifact']} | {runtime} | {'yes' if e['same_outputs'] else 'no'} | "
                     f"{_pct(e['accuracy'][e['reference']])} | {_pct(e['accuracy'][e['device']])} | {change}"
                     f"{' FLAGGED' if e['flagged'] else ''} | {_pct(e['agreement'])} |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def say(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


if __name__ == "__main__":
    main()
