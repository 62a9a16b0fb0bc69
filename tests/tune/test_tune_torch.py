"""A tune whose source is a PyTorch program (the encoder of tests/models/encoders.py): structured_prune takes such
programs in a recipe, but the tune's pruning space is guided by a layer sensitivity measured on Keras models, so the
tune tries the program's post-training exports only, and says so, rather than failing on the sensitivity."""

import edgepress
from edgepress.api import Progress as Quiet
from tests.models import encoders


def test_a_tune_of_a_pytorch_program_tries_its_exports_without_pruning(tmp_path):
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
    assert trial["rows"] and all(r["format"] == "onnx" for r in trial["rows"])
    assert any("PyTorch program" in m and "post-training exports only" in m for m in said), said
