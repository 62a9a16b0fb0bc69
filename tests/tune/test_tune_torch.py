"""A tune whose source is a PyTorch program (the encoder of tests/models/encoders.py): its trials prune the program
(structured_prune, heads and MLP units) with one ratio for every layer, and say so: the layer sensitivity that guides
per-layer ratios is measured on Keras models."""

import edgepress
from edgepress.api import Progress as Quiet
from tests.models import encoders


def test_a_tune_of_a_pytorch_program_prunes_it_with_one_ratio(tmp_path):
    encoders.torch_encoder(tmp_path / "enc.pt2", epochs=2)
    said = []

    class Progress(Quiet):
        def done(self, message: str) -> None:
            said.append(message)

    recipe = edgepress.Recipe.from_dict({
        "name": "enc", "model": {"path": str(tmp_path / "enc.pt2")},
        "data": {"dataset": "digits", "train_size": 64, "test_size": 40, "calibration_samples": 10,
                 "check_samples": 10},
        "targets": ["x86-host"], "measure": {"runs": 3, "warmup": 1, "threads": 1, "target_ci_width": None},
        "gates": {"max_accuracy_drop": 0.5},
        "tune": {"trials": 1, "space": {"ratio": [0.5, 0.5], "fine_tune_epochs": [1], "distill": [False],
                                        "precisions": ["onnx:fp32"]}},
    })
    result = edgepress.tune(recipe, tmp_path / "out", progress=Progress())
    (trial,) = [t for t in result.results["trials"] if t["status"] == "complete"]
    source, pruned = trial["models"]
    assert pruned["stage"] == "structured_prune" and pruned["macs"] < source["macs"]  # heads and units removed
    assert trial["rows"] and all(r["format"] == "onnx" and r["p50_ms"] > 0 for r in trial["rows"])
    assert any("PyTorch program" in m and "one ratio for every layer" in m for m in said), said
