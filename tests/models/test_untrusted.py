"""A model file is data: loading runs no code from it unless the caller says the file is trusted.

Each model here has a Lambda layer whose function creates a marker file. Building and saving a model
calls that function (Keras traces it), so each builder deletes the marker after saving: from then on,
only loading the file could create it. Without trust, loading must raise EdgepressError naming the layer
and the trust flags, and leave no marker; with trusted=True the model loads and works (its code runs).
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.compat import keras as tf_keras_module
from edgepress.errors import EdgepressError
from edgepress.models.loading import load_model, open_model
from edgepress.models.trust import check_untrusted

tf_keras = tf_keras_module()
import keras as keras3  # noqa: E402  (Keras 3; after compat, which sets TF_USE_LEGACY_KERAS)
import tensorflow as tf  # noqa: E402

X = np.random.default_rng(0).random((3, 8, 8)).astype("float32")


def _marking(marker: Path):
    """A function that creates `marker`, then returns its input: the code a file must not run unless trusted.

    The path is a constant in its bytecode: no global, default argument or closure is needed at load (Keras 3
    saves defaults as a JSON list and then cannot load them).
    """
    return eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")


def _layers(k, marker: Path):
    return [k.layers.Flatten(name="flat"), k.layers.Lambda(_marking(marker), name="evil"),
            k.layers.Dense(10, name="logits")]


def _functional(k, marker: Path):
    inputs = k.Input((8, 8))
    x = inputs
    for layer in _layers(k, marker):
        x = layer(x)
    return k.Model(inputs, x, name="functional_lambda")


def _sequential(k, marker: Path):
    return k.Sequential([k.Input((8, 8)), *_layers(k, marker)], name="sequential_lambda")


# (Keras, builder, file name): the tf_keras .h5 files (functional, Sequential), a tf_keras SavedModel directory,
# a tf_keras .keras archive, a Keras 3 .keras archive and a Keras 3 .h5 file.
FILES = {
    "tf_keras-functional-h5": (tf_keras, _functional, "model.h5"),
    "tf_keras-sequential-h5": (tf_keras, _sequential, "model.h5"),
    "tf_keras-savedmodel": (tf_keras, _functional, "saved_model"),
    "tf_keras-keras": (tf_keras, _functional, "model.keras"),
    "keras3-keras": (keras3, _functional, "model.keras"),
    "keras3-sequential-h5": (keras3, _sequential, "model.h5"),
}


def _build(tmp_path: Path, case: str) -> tuple[Path, Path, np.ndarray]:
    """(model path, marker path, the model's outputs on X) for `case`; the marker does not exist."""
    k, build, name = FILES[case]
    marker = tmp_path / "MARKER"
    model = build(k, marker)
    expected = np.asarray(model(X))
    path = tmp_path / name
    model.save(str(path))
    assert marker.exists()  # the marker really is created by the Lambda's function...
    marker.unlink()  # ...and from here on only loading the file could create it again
    return path, marker, expected


def _refusal(path: Path) -> str:
    with pytest.raises(EdgepressError) as raised:
        load_model(path)
    return " ".join(str(raised.value).split())


@pytest.mark.parametrize("case", FILES)
def test_lambda_file_is_refused_without_running_its_code(tmp_path, case):
    path, marker, _ = _build(tmp_path, case)
    message = _refusal(path)
    assert str(path) in message and "'evil'" in message and "Lambda" in message
    assert "model.trusted: true" in message and "--trust-model" in message and "trusted=True" in message
    assert not marker.exists()


@pytest.mark.parametrize("case", FILES)
def test_trusted_lambda_file_loads_and_works(tmp_path, case):
    path, marker, expected = _build(tmp_path, case)
    model = load_model(path, trusted=True)
    assert isinstance(model, keras3.Model if case.startswith("keras3") else tf_keras.Model)
    assert [layer.name for layer in model.layers][-2:] == ["evil", "logits"]
    np.testing.assert_allclose(np.asarray(model(X)), expected, atol=1e-5)
    assert marker.exists()  # trusted: the file's code did run, as it does in Keras


def test_trusted_keras3_lambda_with_arguments_loads_and_is_bridged(tmp_path):
    # The rebuild in tf_keras calls the function Keras 3 loaded, with the layer's saved arguments.
    from edgepress.models.bridge import to_tf_keras

    inputs = keras3.Input((4,))
    outputs = keras3.layers.Lambda(lambda x, scale: x * scale, arguments={"scale": 3.0}, name="scaled")(inputs)
    path = tmp_path / "scaled.keras"
    keras3.Model(inputs, outputs).save(path)
    assert "'scaled'" in _refusal(path)
    ones = np.ones((2, 4), "float32")
    loaded = load_model(path, trusted=True)
    np.testing.assert_allclose(np.asarray(loaded(ones)), 3 * ones)
    np.testing.assert_allclose(to_tf_keras(loaded)(ones).numpy(), 3 * ones)


def test_distill_student_file_is_trusted_by_its_own_flag(tmp_path):
    from edgepress.compress.distill import StudentSpec, make_student

    path, marker, expected = _build(tmp_path, "tf_keras-functional-h5")
    teacher = tf_keras.Sequential([tf_keras.Input((8, 8)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(10)])
    with pytest.raises(EdgepressError, match="layer 'evil' is a Lambda layer"):
        make_student(teacher, StudentSpec(path=str(path)))
    assert not marker.exists()
    student = make_student(teacher, StudentSpec(path=str(path), trusted=True))
    np.testing.assert_allclose(student(X).numpy(), expected, atol=1e-5)


# --- configs crafted by hand: what Keras itself would not write, an attacker would -----------------


def _plain_keras3(tmp_path: Path) -> Path:
    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2, name="dense")])
    path = tmp_path / "plain.keras"
    model.save(path)
    return path


def _with_config(path: Path, edit) -> Path:
    """A copy of the .keras archive `path` whose config.json is `edit(config)`."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    crafted = path.with_name("crafted.keras")
    with zipfile.ZipFile(crafted, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return crafted


def _dense(config: dict) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")


def test_module_outside_keras_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_initializers.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def edit(config):
        _dense(config)["config"]["kernel_initializer"] = {
            "module": "evil_initializers", "class_name": "Evil", "config": {}, "registered_name": None}

    crafted = _with_config(_plain_keras3(tmp_path), edit)
    message = _refusal(crafted)
    assert "Evil" in message and "plain Keras model" in message  # the existing custom-object message
    assert not marker.exists() and "evil_initializers" not in sys.modules


def test_a_nested_models_compile_config_is_checked(tmp_path, monkeypatch):
    # Keras 3 compiles a nested model from its own compile_config even with compile=False: a custom loss there
    # would be imported.
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_losses.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    inner = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2, name="dense")], name="inner")
    outer = keras3.Sequential([keras3.Input((4,)), inner], name="outer")
    outer.save(tmp_path / "nested.keras")

    def edit(config):
        nested = config["config"]["layers"][-1]
        nested["compile_config"] = {"loss": {"module": "evil_losses", "class_name": "Evil", "config": {},
                                             "registered_name": None}}

    message = _refusal(_with_config(tmp_path / "nested.keras", edit))
    assert "Evil" in message and not marker.exists() and "evil_losses" not in sys.modules


def test_a_module_that_is_not_a_string_is_refused_cleanly(tmp_path):
    def edit(config):
        _dense(config)["config"]["kernel_initializer"] = {"module": 7, "class_name": "Zeros", "config": {}}

    assert "Zeros" in _refusal(_with_config(_plain_keras3(tmp_path), edit))


def test_serialized_lambda_outside_a_lambda_layer_is_refused(tmp_path):
    def edit(config):  # a Keras 3 __lambda__ as an activation: Keras deserializes bytecode there too
        _dense(config)["config"]["activation"] = {"class_name": "__lambda__", "config": {
            "code": "AAAA", "defaults": None, "closure": None}}

    message = _refusal(_with_config(_plain_keras3(tmp_path), edit))
    assert "'dense'" in message and "marshalled bytecode" in message and "--trust-model" in message


def test_keras_module_outside_the_layer_namespaces_is_refused(tmp_path):
    def edit(config):  # keras.utils.get_file would download and write files
        _dense(config)["config"]["kernel_initializer"] = {
            "module": "keras.src.utils.file_utils", "class_name": "get_file", "config": {}, "registered_name": None}

    message = _refusal(_with_config(_plain_keras3(tmp_path), edit))
    assert "'dense'" in message and "keras.src.utils.file_utils.get_file" in message


def test_tf_op_layers_other_than_math_ops_are_refused(tmp_path):
    def op_layer(function: str) -> dict:
        return {"class_name": "Functional", "config": {"name": "m", "layers": [
            {"class_name": "TFOpLambda", "name": "op", "config": {"name": "op", "function": function}}]}}

    for allowed in ("math.add", "nn.relu", "reshape", "__operators__.getitem"):
        check_untrusted(tmp_path / "m.h5", [op_layer(allowed)])
    for refused in ("io.write_file", "print", "py_function", "compat.v1.py_func", "load_op_library"):
        with pytest.raises(EdgepressError, match=f"layer 'op' calls tf.{refused}"):
            check_untrusted(tmp_path / "m.h5", [op_layer(refused)])


def test_tf_keras_model_with_tf_ops_still_loads(tmp_path):
    # x + 1, tf.nn.relu, tf.reshape and slicing are saved as TFOpLambda / SlicingOpLambda layers: allowed.
    inputs = tf_keras.Input((4,))
    x = tf.reshape(tf.nn.relu(inputs + 1.0), (-1, 4))[:, :2]
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(x))
    model.save(tmp_path / "ops.h5")
    ones = np.ones((2, 4), "float32")
    np.testing.assert_allclose(load_model(tmp_path / "ops.h5")(ones).numpy(), model(ones).numpy(), atol=1e-6)


# --- graphs: plain SavedModels and ONNX files hold no Python --------------------------------------


def test_plain_saved_model_with_a_python_op_is_refused_before_loading(tmp_path):
    # tf.py_function's Python lives in the process that saved the model, not in the file; in this very process
    # it is still registered, so loading and calling the graph here would create the marker.
    marker = tmp_path / "MARKER"

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return tf.py_function(lambda t: (open(marker, "w").close(), t)[1], [x], tf.float32)

    module = Module()
    tf.saved_model.save(module, str(tmp_path / "py_sm"), signatures={"serving_default": module.serve})
    with pytest.raises(EdgepressError, match="EagerPyFunc"):
        open_model(tmp_path / "py_sm")
    assert not marker.exists()


def test_plain_saved_model_loads_as_a_graph(tmp_path):
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.serve = tf.function(lambda x: x * module.scale, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    graph = open_model(tmp_path / "sm")
    np.testing.assert_allclose(graph.predict(np.ones((2, 4), "float32")), 2.0)


def test_onnx_runtime_has_no_python_op(tmp_path):
    # onnxruntime-extensions' PyOp (domain ai.onnx.contrib) would call Python; its custom domain is refused unless the
    # file is trusted, and plain onnxruntime, which edgepress uses, does not know it: an .onnx file cannot make it
    # run Python.
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("PyOp", ["x"], ["y"], domain="ai.onnx.contrib")
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [value("x", TensorProto.FLOAT, [None, 4])],
                              [value("y", TensorProto.FLOAT, [None, 4])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, tmp_path / "pyop.onnx")
    with pytest.raises(EdgepressError, match="PyOp of the custom domain 'ai.onnx.contrib'"):
        open_model(tmp_path / "pyop.onnx")
    with pytest.raises(EdgepressError, match="not a registered function/op"):
        open_model(tmp_path / "pyop.onnx", trusted=True).predict(np.ones((1, 4), "float32"))


# --- through the CLI ------------------------------------------------------------------------------

runner = CliRunner()


def _recipe(tmp_path: Path, model_path: Path, **model) -> Path:
    recipe = {
        "name": "lambda",
        "model": {"path": str(model_path), **model},
        "data": {"dataset": "digits", "train_size": 200, "test_size": 50},
        "exports": [{"format": "tflite", "precision": "fp32"}],
        "measure": {"runs": 3, "warmup": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("case", ["tf_keras-functional-h5", "tf_keras-savedmodel", "keras3-keras"])
def test_run_refuses_an_untrusted_lambda_model(tmp_path, case):
    path, marker, _ = _build(tmp_path, case)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_recipe(tmp_path, path)), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "'evil'" in message and "--trust-model" in message
    assert not marker.exists() and not out.exists()


def test_quantize_refuses_an_untrusted_lambda_model(tmp_path):
    path, marker, _ = _build(tmp_path, "tf_keras-functional-h5")
    out = tmp_path / "run"
    result = runner.invoke(app, ["quantize", str(path), "--max-accuracy-drop", "1%", "--data", "digits",
                                 "--test-size", "50", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "'evil'" in result.output
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("how", ["--trust-model", "model.trusted"])
def test_run_with_trust_loads_the_lambda_model(tmp_path, how):
    path, marker, _ = _build(tmp_path, "tf_keras-functional-h5")
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, path, **({"trusted": True} if how == "model.trusted" else {}))
    flags = ["--trust-model"] if how == "--trust-model" else []
    result = runner.invoke(app, ["run", str(recipe), "-o", str(out), *flags])
    assert result.exit_code == 0, result.output
    assert (out / "results.json").is_file() and (out / "artifacts" / "lambda_fp32.tflite").is_file()
    assert marker.exists()


# --- Keras 3 loads print no native start-up lines -------------------------------------------------


@pytest.mark.parametrize("trusted", [False, True])
def test_keras3_load_prints_nothing_on_stderr(tmp_path, trusted):
    path = _plain_keras3(tmp_path)
    code = f"import edgepress.models.loading as l; l.load_model({str(path)!r}, trusted={trusted})"
    env = {key: value for key, value in os.environ.items() if key != "EDGEPRESS_VERBOSE"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this checkout's edgepress
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "absl::InitializeLog" not in done.stderr and "port.cc" not in done.stderr, done.stderr


def test_config_nested_too_deeply_is_refused_cleanly(tmp_path):
    deep: dict = {"class_name": "Dense", "config": {}}
    for _ in range(5000):
        deep = {"wrapped": [deep]}
    with pytest.raises(EdgepressError, match="nested too deeply"):
        check_untrusted(tmp_path / "m.h5", [{"class_name": "Sequential", "config": {"name": "m", "layers": [deep]}}])
