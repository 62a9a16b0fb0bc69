"""benchmarks/transformers.py on a tiny budget (slow, minutes): every contender is made, measured and reported:
the Keras 3 ViT's TFLite files, `edgepress tune`'s pick (two trials), float ONNX and NNCF's int8 of it, and the
PyTorch ViT's table. NNCF runs in its own venv (benchmarks/.venv-nncf), which the script makes with pip the first
time: that run needs the package index."""

import re
import subprocess
import sys

import pytest

from tests.conftest import MNIST, REPO

CONTENDERS = ("float (TFLite fp32)", "plain PTQ int8 (TFLite converter)", "LiteRT's quantizer (static_wi8_ai8)",
              "edgepress qat -> tflite int8", "edgepress accuracy-aware int8",
              "edgepress structured_prune + distill -> int8", "float (ONNX fp32)",
              "plain PTQ int8 (onnxruntime, static QDQ)")
TORCH = ("float (TFLite fp32, litert-torch)", "plain PTQ int8 (litert-torch)", "float (ONNX fp32, torch.onnx)")


def _row(lines: list[str], label: str) -> str:
    row = next(line for line in lines if line.startswith(f"| {label}"))
    assert " us " not in row and re.search(r"\| \d+\.\d \[\d+\.\d, \d+\.\d\] \|", row), row  # a p50 with its interval
    return row


@pytest.mark.slow
def test_the_transformers_benchmark_makes_and_measures_every_contender(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transformers.py"), "--tiny", "--data",
                           str(MNIST), "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-2000:]
    section = done.stdout[done.stdout.index("## transformers"):]
    keras, torch = section.split("### the same ViT in PyTorch")
    keras_lines, torch_lines = keras.splitlines(), torch.splitlines()
    for label in CONTENDERS:
        _row(keras_lines, label)
    _row(keras_lines, "NNCF ")  # its version follows
    assert "QAT of the attention model within 0.5 pt of float" in section
    # The tune ran its two trials (--tiny) and said what each tried; its pick was re-measured with the others.
    trials = [line for line in keras_lines if re.match(r"- trials? \d", line)]
    numbers = [n for line in trials for n in line.split(":")[0].split(" ", 2)[2].split(", ")]
    assert sorted(numbers) == ["0", "1"], trials
    assert all("structured_prune 0." in t and "+ distill" in t for t in trials), trials
    assert "on the validation set (tune.validation_size 125" in keras  # the last eighth of the 1,000 --tiny images
    if "no pick to re-measure" not in keras:
        _row(keras_lines, "edgepress tune's pick")
        assert re.search(r"on the validation set \(its test accuracy, measured by the tune: \d+\.\d\d%\)", keras)
        assert re.search(r"issue 23's goal .* (MET|NOT met)\.", keras)
    for label in TORCH:
        _row(torch_lines, label)
    _row(torch_lines, "edgepress structured_prune 0.")
    files = {p.name for p in (tmp_path / "work").iterdir()}
    assert {"nncf_int8.onnx", "float_fp32.onnx", "torch_base.pt2", "torch_float.pt2"} <= files
