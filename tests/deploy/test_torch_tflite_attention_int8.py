"""Post-training tflite int8 of a PyTorch attention program (litert-torch's PT2E quantizer, wrapped by
edgepress.models.torch_attention_quant as qat's is): the two matmuls inside scaled_dot_product_attention run as int8
BATCH_MATMULs, so every MAC of the tests' encoder is int8 (litert-torch's quantizer alone: 89.6%), and the file
still agrees with the program; `float_ops: [attention]` keeps them float, and is refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_torch")


def test_the_attention_matmuls_of_a_pytorch_encoder_are_int8_in_its_calibrated_tflite_int8_file(tmp_path):
    from edgepress.deploy import export_tflite
    from edgepress.deploy.coverage import int8_macs
    from edgepress.models.datasets import load_dataset
    from edgepress.models.torch_program import TorchSource
    from tests.models import encoders

    encoders.torch_encoder(tmp_path / "enc.pt2", epochs=5)
    program = TorchSource(tmp_path / "enc.pt2")
    data = load_dataset("digits", test_size=100).fit_to((8, 8))
    made = export_tflite(program, tmp_path / "enc_int8.tflite", "int8", calibration=data.x_train[:32],
                         check_data=data.x_test)
    assert made.quantization["activations"] == "int8 (calibrated)"
    coverage = int8_macs(made.path)
    assert coverage["int8_macs"] == 1.0, coverage["float_ops"]
    assert [op["kind"] for op in coverage["ops"] if op["op"] == "BATCH_MATMUL"] == ["integer", "integer"]
    assert made.check["top1_agreement"] >= 0.9, made.check
    # float_ops: [attention] keeps them float, as litert-torch's quantizer alone does
    kept = export_tflite(program, tmp_path / "enc_int8_float_attention.tflite", "int8", calibration=data.x_train[:32],
                         check_data=data.x_test, float_ops=["attention"])
    assert kept.quantization["float_ops"] == ["attention"]
    coverage = int8_macs(kept.path)
    assert 0.8 < coverage["int8_macs"] < 1.0
    assert [op["kind"] for op in coverage["ops"] if op["op"] == "BATCH_MATMUL"] == ["float", "float"]


def test_float_ops_a_pytorch_program_cannot_honour_are_refused_naming_it(tmp_path):
    import torch

    from edgepress.deploy import export_tflite
    from edgepress.errors import EdgepressError
    from edgepress.models.torch_program import TorchSource

    program = TorchSource.from_module(torch.nn.Sequential(torch.nn.Linear(8, 4)), torch.zeros(2, 8))
    with pytest.raises(EdgepressError, match=r"has no aten.scaled_dot_product_attention.*Remove 'attention'"):
        export_tflite(program, tmp_path / "m.tflite", "int8", calibration=np.zeros((4, 8), np.float32),
                      float_ops=["attention"])
    with pytest.raises(EdgepressError, match=r"'elementwise'.*onnx int8_static"):
        export_tflite(program, tmp_path / "m.tflite", "int8", calibration=np.zeros((4, 8), np.float32),
                      float_ops=["elementwise"])
    assert not (tmp_path / "m.tflite").exists()
