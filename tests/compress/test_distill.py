import numpy as np
import pytest

from edgepress.compat import keras
from edgepress.compress import DistillConfig, distill
from edgepress.compress.distill import distill_and_score
from edgepress.errors import EdgepressError
from edgepress.models import training


def _agreement(model, x, reference_model, reference_x) -> float:
    ours = np.argmax(training.predict(model, x), axis=-1)
    return float(np.mean(ours == np.argmax(training.predict(reference_model, reference_x), axis=-1)))


def _channels(model) -> list[int]:
    return [getattr(layer, "filters", None) or layer.units for layer in model.layers if hasattr(layer, "kernel")]


def test_width_student_learns_from_the_teacher_and_is_compared_with_scratch(trained_cnn, digits):
    test = (digits.x_test, digits.y_test)
    student, scores = distill_and_score(trained_cnn, digits.x_train, digits.y_train, student={"width": 0.25},
                                        epochs=6, batch_size=32, temperature=2, alpha=0.5, compare_scratch=True,
                                        test=test)

    assert _channels(trained_cnn) == [32, 64, 64, 64, 10]
    assert _channels(student) == [8, 16, 16, 16, 10]  # every Conv/Dense scaled but the classifier
    assert [layer.name for layer in student.layers] == [layer.name for layer in trained_cnn.layers]
    d = scores["distill"]
    teacher = training.accuracy(training.predict(trained_cnn, digits.x_test), digits.y_test)
    assert d["teacher_accuracy"] == teacher
    assert d["student_accuracy"] == training.accuracy(training.predict(student, digits.x_test), digits.y_test)
    # A sixteenth of the teacher's weights, trained on the same budget: it matches the same student trained
    # without the teacher, or at least comes close to the teacher, and it predicts what the teacher predicts.
    assert 0 < d["scratch_accuracy"] <= 1
    assert d["student_accuracy"] >= min(d["scratch_accuracy"], teacher) - 0.03
    assert _agreement(student, digits.x_test, trained_cnn, digits.x_test) >= 0.9


def test_zoo_student_learns_from_unlabelled_samples(trained_cnn, digits):
    # No labels (alpha 0): all the student knows comes from the teacher. The MLP takes flattened inputs.
    student = distill(trained_cnn, digits.x_train, None, student={"zoo": "seed_mlp"}, alpha=0, epochs=4,
                      batch_size=32)

    flat = digits.x_test.reshape(len(digits.x_test), -1)
    assert student.input_shape == (None, 784) and student.output_shape == trained_cnn.output_shape
    teacher = training.accuracy(training.predict(trained_cnn, digits.x_test), digits.y_test)
    assert training.accuracy(training.predict(student, flat), digits.y_test) >= teacher - 0.05
    assert _agreement(student, flat, trained_cnn, digits.x_test) >= 0.9


def _dense_student(tmp_path, outputs: int, inputs=(28, 28, 1)) -> str:
    k = keras()
    model = k.Sequential([k.layers.Input(inputs), k.layers.Flatten(name="flat"), k.layers.Dense(outputs, name="head")])
    model.save(tmp_path / "student.keras")
    return str(tmp_path / "student.keras")


def test_student_from_a_file_starts_from_its_weights(trained_cnn, digits, tmp_path):
    path = _dense_student(tmp_path, 10)
    saved = keras().models.load_model(path).get_layer("head").get_weights()[0]

    student = distill(trained_cnn, digits.x_train[:256], digits.y_train[:256], student={"path": path}, epochs=1)

    assert [layer.name for layer in student.layers] == ["flat", "head"]
    assert not np.array_equal(student.get_layer("head").get_weights()[0], saved)  # trained
    assert np.allclose(keras().models.load_model(path).get_layer("head").get_weights()[0], saved)  # file untouched


def test_a_student_with_other_outputs_is_refused(trained_cnn, digits, tmp_path):
    with pytest.raises(EdgepressError, match=r"outputs shape \(5,\).*\(10,\).*10 units"):
        distill(trained_cnn, digits.x_train, digits.y_train, student={"path": _dense_student(tmp_path, 5)})


def test_a_student_that_cannot_take_the_samples_is_refused(trained_cnn, digits, tmp_path):
    with pytest.raises(EdgepressError, match=r"inputs of shape \(5,\)"):
        distill(trained_cnn, digits.x_train, digits.y_train, student={"path": _dense_student(tmp_path, 10, (5,))})


def test_a_width_that_leaves_a_layer_without_channels_is_refused(trained_cnn, digits):
    with pytest.raises(EdgepressError, match=r"width 0.01 leaves layer 'conv2d' with no filters.*at least 0.0312"):
        distill(trained_cnn, digits.x_train, digits.y_train, student={"width": 0.01})


def test_labels_are_needed_for_the_hard_loss(trained_cnn, digits):
    with pytest.raises(EdgepressError, match="set alpha to 0"):
        distill(trained_cnn, digits.x_train, None, student={"width": 0.5}, alpha=0.5)


def test_recipe_chain_structured_prune_distill_from_source_prune_qat_to_int8(trained_cnn, tmp_path):
    # The chain a user writes to make a model fast and small: remove channels, recover from the original
    # model (`teacher: source`, no `student`: the pruned model itself is trained on), prune, QAT, int8.
    import edgepress

    trained_cnn.save(tmp_path / "teacher.keras")
    recipe = edgepress.Recipe.from_dict({
        "name": "chain", "model": {"path": "teacher.keras"},
        "data": {"dataset": "digits", "train_size": 1000, "test_size": 400, "calibration_samples": 50,
                 "check_samples": 50},
        "steps": [{"type": "structured_prune", "ratio": 0.75, "fine_tune_epochs": 0},
                  {"type": "distill", "teacher": "source", "epochs": 4, "batch_size": 32, "alpha": 0.1},
                  {"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1},
                  {"type": "qat", "fine_tune_epochs": 1}],
        "exports": [{"format": "tflite", "precision": "int8"}], "measure": {"runs": 5, "warmup": 1},
    }, base=tmp_path)

    report = edgepress.run(recipe, tmp_path / "run")

    source, pruned, distilled, sparse, aware = report.results["models"]
    assert [m["stage"] for m in report.results["models"]][1:] == ["structured_prune", "distill", "prune", "qat"]
    assert distilled["params"] == pruned["params"] < source["params"] / 4  # the pruned model was trained on
    d = distilled["distill"]
    assert d["teacher"] == "source" and d["student"] == "the model entering the step"
    assert d["teacher_accuracy"] == source["accuracy"]
    assert distilled["accuracy"] > pruned["accuracy"] + 0.05  # the step each stage's accuracy shows
    assert sparse["sparsity"] >= 0.45
    (artifact,) = report.artifacts
    assert artifact["metrics"]["accuracy"] == pytest.approx(aware["accuracy"], abs=0.03)
    assert "the source model" in (tmp_path / "run" / "report.md").read_text()
    # qat right after prune keeps the zeros (preserve: auto is pruning-preserving QAT).
    assert aware["sparsity"] >= 0.45


def test_teacher_source_needs_the_source_model(trained_cnn, digits):
    with pytest.raises(EdgepressError, match="teacher: source needs the run's original model"):
        distill(trained_cnn, digits.x_train, digits.y_train, teacher="source")


@pytest.mark.parametrize("options, message", [
    ({}, "give a student"),
    ({"student": {"zoo": "seed_mlp", "width": 0.5}}, "exactly one of zoo, path or width"),
    ({"student": {"width": 0}}, "greater than 0"),
    ({"student": {"width": 0.5}, "unlabelled": "x.npz", "alpha": 0.1}, "set alpha to 0"),
    ({"student": {"width": 0.5}, "unlabelled": "x.npz", "alpha": 0, "compare_scratch": True}, "no labels|none"),
])
def test_config_refuses_contradictions(options, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**options)
