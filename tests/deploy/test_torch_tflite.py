"""PyTorch in: a torch.export program to TFLite with the real litert-torch, and to ONNX with torch.onnx.

A tiny CNN trained for one epoch on scikit-learn's digits (3x32x32, channels first); every export is checked
against the PyTorch model's own outputs, and the layout each file takes is in its manifest.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.cli import app  # noqa: E402
from edgepress.deploy import export_onnx, export_tflite, measure  # noqa: E402
from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.loading import open_model  # noqa: E402
from edgepress.models.torch_program import TorchSource  # noqa: E402

cli = CliRunner()


@pytest.fixture(scope="module")
def data():
    from edgepress.models.datasets import load_dataset

    return load_dataset("digits", train_size=400, test_size=100).fit_to((3, 32, 32))


@pytest.fixture(scope="module")
def program(data, tmp_path_factory):
    """The zoo's PyTorch CNN, trained one epoch, as a .pt2 program opened by edgepress."""
    from edgepress.models.torch_cnn import build_torch_cnn, export_torch_program, train_torch_cnn

    model = train_torch_cnn(build_torch_cnn(), data.x_train, data.y_train, epochs=2, learning_rate=3e-3)
    path = export_torch_program(model, tmp_path_factory.mktemp("torch") / "cnn.pt2")
    graph = open_model(path)
    assert isinstance(graph, TorchSource) and graph.input_shape == (None, 3, 32, 32) and graph.layout == "NCHW"
    return graph


def _accuracy(outputs, y) -> float:
    return float(np.mean(np.argmax(outputs, -1) == y))


def test_every_precision_converts_and_agrees_with_pytorch(program, data, tmp_path):
    x = data.x_test
    source = _accuracy(program.predict(x), data.y_test)
    assert source > 0.5  # a trained model, so agreement below means something
    made = {}
    for precision in ("fp32", "fp16", "dynamic", "int8"):
        made[precision] = export_tflite(program, tmp_path / f"cnn_{precision}.tflite", precision,
                                        calibration=data.x_train[:32], check_data=x)
    assert made["fp32"].check["max_abs_diff"] < 1e-4 and made["fp32"].check["top1_agreement"] == 1.0
    assert made["fp16"].check["max_abs_diff"] < 1e-2
    for precision in ("dynamic", "int8"):
        assert made[precision].check["top1_agreement"] >= 0.9, made[precision].check
    assert made["int8"].inputs[0].dtype == "int8" and made["int8"].inputs[0].quantization is not None
    assert made["int8"].quantization["calibration_samples"] == 32
    assert made["int8"].bytes < 0.4 * made["fp32"].bytes and made["fp16"].bytes < 0.6 * made["fp32"].bytes
    for artifact in made.values():
        manifest = json.loads(artifact.manifest_path.read_text())
        assert manifest["layout"] == "NCHW" and manifest["inputs"][0]["shape"] == [1, 3, 32, 32]
        assert manifest["quantization"]["converter"].startswith("litert-torch")


def test_nhwc_layout_takes_channels_last_and_is_measured_from_nchw_data(program, data, tmp_path):
    nchw = export_tflite(program, tmp_path / "cnn_fp32.tflite", "fp32", check_data=data.x_test)
    nhwc = export_tflite(program, tmp_path / "cnn_fp32_nhwc.tflite", "fp32", check_data=data.x_test, layout="NHWC")
    assert nhwc.layout == "NHWC" and nhwc.inputs[0].shape == [1, 32, 32, 3]
    assert nhwc.check["max_abs_diff"] < 1e-4
    # The run measures with data in the PyTorch model's layout: the NHWC file gets it channels last.
    results = [measure(a, (data.x_test, data.y_test), runs=3, warmup=1) for a in (nchw, nhwc)]
    assert results[0]["accuracy"] == results[1]["accuracy"] == _accuracy(program.predict(data.x_test), data.y_test)


def test_onnx_from_a_pytorch_program(program, data, tmp_path):
    fp32 = export_onnx(program, tmp_path / "cnn_fp32.onnx", "fp32", check_data=data.x_test)
    assert fp32.check["max_abs_diff"] < 1e-4 and fp32.layout == "NCHW" and fp32.inputs[0].shape == [-1, 3, 32, 32]
    static = export_onnx(program, tmp_path / "cnn_int8.onnx", "int8_static", calibration=data.x_train[:32],
                         check_data=data.x_test)
    assert static.check["top1_agreement"] >= 0.9
    # onnxruntime's quantizers need the weights as initializers, not Constant nodes.
    dynamic = export_onnx(program, tmp_path / "cnn_int8_dynamic.onnx", "int8_dynamic", check_data=data.x_test)
    assert dynamic.check["top1_agreement"] >= 0.9 and dynamic.bytes < 0.4 * fp32.bytes


def test_a_module_with_an_op_litert_torch_cannot_lower_is_named(tmp_path):
    import torch

    class Svd(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x.reshape(x.shape[0], 3, -1)).S

    graph = TorchSource.from_module(Svd(), torch.zeros(2, 3, 8, 8))
    with pytest.raises(EdgepressError) as e:
        export_tflite(graph, tmp_path / "svd.tflite")
    assert "aten._linalg_svd" in str(e.value) and "could not convert" in str(e.value)
    assert not (tmp_path / "svd.tflite").exists()


def test_int16x8_from_a_pytorch_program_comes_from_litert_quantizer(program, data, tmp_path):
    """litert-torch quantizes to int8 only: int16x8 is its fp32 file quantized by ai-edge-quantizer, calibrated."""
    artifact = export_tflite(program, tmp_path / "x.tflite", "int16x8", calibration=data.x_train[:8],
                             check_data=data.x_test[:32])
    assert artifact.quantization["activations"] == "int16 (calibrated)"
    assert artifact.quantization["calibration_samples"] == 8
    assert artifact.check["top1_agreement"] >= 0.9, artifact.check


def test_a_pt2_that_is_not_an_exported_program_exits_2(tmp_path):
    bad = tmp_path / "weights.pt2"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("data.pkl", b"not a program")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "bad", "model": {"path": str(bad)}, "data": {"dataset": "digits", "test_size": 50},
        "exports": [{"format": "tflite"}],
    }))
    result = cli.invoke(app, ["run", str(recipe), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Cannot load" in text and "as a PyTorch exported program" in text and "torch.export.save" in text
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def _rewritten(source, target, change):
    """A copy of the .pt2 archive `source` at `target`, each entry's bytes passed through change(name, data)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, change(name, old.read(name)))
    return target


def test_a_pt2_that_would_unpickle_code_is_refused_before_torch_reads_it(program, tmp_path):
    """torch.export.load unpickles weights marked use_pickle and falls back to a full unpickle of sample inputs
    that are not plain tensors: edgepress refuses both, naming what, without calling it."""
    import fractions
    import io

    import torch

    def pickled_weight(name, data):
        if not name.endswith("_weights_config.json"):
            return data
        config = json.loads(data)
        first = next(iter(config["config"]))
        config["config"][first]["use_pickle"] = True
        return json.dumps(config).encode()

    def odd_sample_inputs(name, data):
        if "/data/sample_inputs/" not in name:
            return data
        buffer = io.BytesIO()
        torch.save({"x": fractions.Fraction(1, 3)}, buffer)  # an object weights_only loading refuses
        return buffer.getvalue()

    for change, fragment in ((pickled_weight, "is a pickled object"), (odd_sample_inputs, "are not plain tensors")):
        path = _rewritten(program.path, tmp_path / f"{change.__name__}.pt2", change)
        with pytest.raises(EdgepressError) as e:
            TorchSource(path)
        assert fragment in str(e.value) and "would unpickle" in str(e.value)
