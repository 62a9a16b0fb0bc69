"""A corpus of bad input through `edgepress run`: each case gets exit code 2, one message that names the fault,
no traceback, and no file in the run directory (every refusal comes before anything is written).

Each case builds its input in a temporary folder (recipes, data files, model files) and names a pattern the
message must contain. The property-based tests at the end throw generated recipes and gate values at the
recipe parser: it accepts them or raises EdgepressError, never anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.errors import EdgepressError
from edgepress.recipe import Recipe

runner = CliRunner()

BASE = {
    "name": "fuzz",
    "model": {"zoo": "seed_mlp", "train_epochs": 1},
    "data": {"dataset": "digits", "train_size": 200, "test_size": 50, "calibration_samples": 20},
    "exports": [{"format": "tflite", "precision": "fp32"}],
    "measure": {"runs": 2, "warmup": 0},
}

# id -> (build(tmp, models) -> (recipe file, extra CLI args), pattern the message must match)
CASES: dict[str, tuple[Callable, str]] = {}


def case(name: str, pattern: str):
    def register(build: Callable) -> Callable:
        CASES[name] = (build, pattern)
        return build

    return register


def recipe_file(tmp: Path, raw) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def changed(**sections) -> dict:
    """BASE with whole sections replaced, or merged when given as ('merge', {...})."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        if isinstance(value, tuple) and value[0] == "merge":
            raw[key] = {**raw[key], **value[1]}
        elif value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def simple(case_name: str, pattern: str, **sections) -> None:
    case(case_name, pattern)(lambda tmp, models: (recipe_file(tmp, changed(**sections)), []))


def npz_case(case_name: str, pattern: str, **arrays) -> None:
    def build(tmp, models):
        np.savez(tmp / "d.npz", **arrays)
        return recipe_file(tmp, changed(data={"dataset": "npz", "path": str(tmp / "d.npz"), "test_size": 10,
                                              "calibration_samples": 5})), []

    case(case_name, pattern)(build)


# -- the recipe file itself ----------------------------------------------------------------------------

case("binary garbage", "not UTF-8")(lambda tmp, m: (_bytes(tmp, bytes(range(256)) * 4), []))
case("latin-1 text", "not UTF-8")(lambda tmp, m: (_bytes(tmp, "name: caf\xe9\nmodel: {zoo: seed_mlp}\n".encode(
    "latin-1")), []))
case("deep flow nesting", "nests 5000 levels")(lambda tmp, m: (recipe_file(tmp, "a: " + "[" * 5000 + "]" * 5000), []))
case("deep block nesting", "nests more than 50 levels")(lambda tmp, m: (recipe_file(tmp, "".join(
    f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n"), []))
case("huge file", "at most 1,000,000 bytes")(lambda tmp, m: (recipe_file(tmp, "# " + "x" * 2_000_000 + "\n"), []))
case("empty file", "an empty file")(lambda tmp, m: (recipe_file(tmp, ""), []))
case("top-level list", "must be a YAML mapping")(lambda tmp, m: (recipe_file(tmp, "- model\n- data\n"), []))
case("top-level scalar", "must be a YAML mapping")(lambda tmp, m: (recipe_file(tmp, "42\n"), []))
case("python object tag", "not valid YAML")(lambda tmp, m: (recipe_file(
    tmp, "model: !!python/object/apply:os.system ['touch pwned']\n"), []))
case("unclosed bracket", "not valid YAML")(lambda tmp, m: (recipe_file(tmp, "model: [unclosed\n"), []))
case("tab indentation", "not valid YAML")(lambda tmp, m: (recipe_file(tmp, "model:\n\tzoo: seed_mlp\n"), []))
case("billion laughs", "not valid YAML|nests|alias|too")(lambda tmp, m: (recipe_file(tmp, "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]"
                                                for p, c in zip("abcdefgh", "bcdefghi", strict=True)])), []))
case("missing recipe file", "not found")(lambda tmp, m: (tmp / "nope.yaml", []))


def _bytes(tmp: Path, data: bytes) -> Path:
    path = tmp / "recipe.yaml"
    path.write_bytes(data)
    return path


# -- recipe values ---------------------------------------------------------------------------------------

simple("model seed too large", r"model\.seed", model={"zoo": "seed_mlp", "seed": 2**70})
simple("data seed negative", r"data\.seed", data={"dataset": "digits", "seed": -1})
simple("data seed a string", r"data\.seed", data={"dataset": "digits", "seed": "abc"})
simple("epochs without end", r"model\.train_epochs", model={"zoo": "seed_mlp", "train_epochs": 10**9})
simple("epochs zero", r"model\.train_epochs", model={"zoo": "seed_mlp", "train_epochs": 0})
simple("batch size zero", r"model\.batch_size", model={"zoo": "seed_mlp", "batch_size": 0})
simple("learning rate negative", r"model\.learning_rate", model={"zoo": "seed_mlp", "learning_rate": -1})
simple("gate as a list", r"max_accuracy_drop: must be a number", gates={"max_accuracy_drop": [0.01]})
simple("gate as a mapping", r"max_accuracy_drop: must be a number", gates={"max_accuracy_drop": {"pt": 1}})
simple("gate with a space", r"no space before %", gates={"max_accuracy_drop": "1 %"})
simple("gate over 100%", r"between 0 and 1", gates={"max_accuracy_drop": "150%"})
simple("gate negative", r"max_accuracy_drop", gates={"max_accuracy_drop": -0.1})
simple("gate a word", r"is not a number", gates={"max_accuracy_drop": "small"})
simple("gate true", r"not true/false", gates={"max_accuracy_drop": True})
simple("p50 gate zero", r"max_p50_ms", gates={"max_p50_ms": 0})
simple("bytes gate a list", r"max_bytes", gates={"max_bytes": [1, 2]})
simple("require unknown", r"gates\.require", gates={"require": "most"})
simple("name escapes upward", r"name", name="../../escaped")
simple("name absolute", r"name", name="/abs/path")
simple("name with a folder", r"name", name="a/b")
simple("name empty", r"name", name="")
simple("name hidden", r"name", name=".hidden")
simple("name too long", r"name", name="n" * 300)
simple("name with a NUL", r"name", name="a\x00b")
simple("name a number", r"name", name=5)
simple("unknown top-level key", r"unknown key 'export'", export=[])
simple("unknown model key", r"unknown key 'model\.zo'", model={"zo": "seed_mlp"})
simple("no model", r"exactly one of model\.zoo", model={})
simple("zoo and path", r"exactly one of model\.zoo", model={"zoo": "seed_mlp", "path": "m.keras"})
simple("unknown zoo model", r"Unknown zoo model 'resnet9000'", model={"zoo": "resnet9000"})
simple("unknown step type", r"shrink", steps=[{"type": "shrink"}])
simple("step without type", r"steps\.0", steps=[{"target_sparsity": 0.5}])
simple("step a string", r"steps\.0", steps=["prune"])
simple("unknown step key", r"unknown key 'steps\.0\.prune\.sparsity'", steps=[{"type": "prune", "sparsity": 0.5}])
simple("fine-tuning without end", r"fine_tune_epochs", steps=[{"type": "prune", "fine_tune_epochs": 10**9}])
simple("distilling without end", r"epochs", steps=[{"type": "distill", "epochs": 10**9}])
simple("sparsity above 1", r"target_sparsity", steps=[{"type": "prune", "target_sparsity": 1.5}])
simple("structured ratio above 1", r"ratio", steps=[{"type": "structured_prune", "ratio": 1.5}])
simple("structured_prune after qat", r"structured_prune must come before qat",
       steps=[{"type": "qat"}, {"type": "structured_prune"}], exports=[{"format": "tflite", "precision": "int8"}])
simple("cluster after qat", r"cluster must come before qat", steps=[{"type": "qat"}, {"type": "cluster"}],
       exports=[{"format": "tflite", "precision": "int8"}])
simple("distill after qat", r"distill must come before qat", steps=[{"type": "qat"}, {"type": "distill",
       "student": {"zoo": "seed_mlp"}}], exports=[{"format": "tflite", "precision": "int8"}])
simple("qat then float export", r"already quantization-aware", steps=[{"type": "qat"}],
       exports=[{"format": "tflite", "precision": "fp16"}])
simple("qat then accuracy-aware int8", r"cannot follow a qat step", steps=[{"type": "qat"}],
       exports=[{"format": "tflite", "quantize": {"max_accuracy_drop": 0.01}}])
simple("prune an unknown layer", r"nope", steps=[{"type": "prune", "layers": ["nope"]}])
simple("qat an unknown layer", r"no layer named nope", steps=[{"type": "qat", "layers": ["nope"]}],
       exports=[{"format": "tflite", "precision": "int8"}])
simple("distill from an unknown zoo student", r"Unknown zoo model", steps=[{"type": "distill",
       "student": {"zoo": "nope"}}])
simple("unknown tflite precision", r"no precision 'int4'", exports=[{"format": "tflite", "precision": "int4"}])
simple("unknown onnx precision", r"no precision 'int8'", exports=[{"format": "onnx", "precision": "int8"}])
simple("unknown format", r"exports\.0\.format", exports=[{"format": "coreml", "precision": "fp32"}])
simple("sparse onnx", r"sparse is a tflite option", exports=[{"format": "onnx", "precision": "fp32", "sparse": True}])
simple("sparse int8", r"sparse is a tflite option", exports=[{"format": "tflite", "precision": "int8",
                                                              "sparse": True}])
simple("quantize at fp16", r"leave out precision", exports=[{"format": "tflite", "precision": "fp16",
                                                             "quantize": {"max_accuracy_drop": 0.01}}])
simple("quantize without a budget", r"max_accuracy_drop", exports=[{"format": "tflite", "quantize": {}}])
simple("quantize budget over 100%", r"between 0 and 1", exports=[{"format": "onnx",
                                                                  "quantize": {"max_accuracy_drop": "200%"}}])
simple("onnx calibration option on tflite", r"apply to ONNX static quantization only", exports=[
    {"format": "tflite", "quantize": {"max_accuracy_drop": 0.01, "calibration": {"method": "entropy"}}}])
simple("unknown calibration preset", r"preset", exports=[
    {"format": "onnx", "quantize": {"max_accuracy_drop": 0.01, "calibration": {"preset": "risc-v"}}}])
simple("batch size zero on an export", r"batch_size", exports=[{"format": "tflite", "precision": "fp32",
                                                                "batch_size": 0}])
simple("measure zero runs", r"measure\.runs", measure={"runs": 0})
simple("measure negative warmup", r"measure\.warmup", measure={"warmup": -1})
simple("measure zero threads", r"measure\.threads", measure={"threads": 0})
simple("unknown measure key", r"unknown key 'measure\.runz'", measure={"runz": 3})
simple("unknown device", r"Unknown device 'toaster'", targets=["toaster"])
simple("device profile file missing", r"not found", targets=["missing-board.yaml"])
simple("two targets with one name", r"different names", targets=["x86-host", "x86-host"])
simple("target override of an unknown field", r"toaster_mode", targets=[{"name": "x86-host", "toaster_mode": 1}])
simple("target override of threads zero", r"threads", targets=[{"name": "x86-host", "threads": 0}])
simple("unknown dataset", r"Unknown dataset|data\.dataset", data={"dataset": "imagenet"})
simple("mnist without a path", r"needs a path", data={"dataset": "mnist"})
simple("npz without a path", r"needs a path", data={"dataset": "npz"})
simple("test size zero", r"data\.test_size", data={"dataset": "digits", "test_size": 0})
simple("sizes over the data", r"cannot give train_size", data={"dataset": "digits", "train_size": 1700,
                                                               "test_size": 500})
simple("check samples zero", r"data\.check_samples", data={"dataset": "digits", "check_samples": 0})
simple("calibration samples beyond the data", r"200 training samples", data={
    "dataset": "digits", "train_size": 200, "test_size": 50, "calibration_samples": 10**9},
    exports=[{"format": "tflite", "precision": "int8"}])
simple("calibration samples zero", r"calibration_samples", data={"dataset": "digits", "calibration_samples": 0})


def _device_file(content: bytes | str):
    def build(tmp, models):
        path = tmp / "board.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return recipe_file(tmp, changed(targets=[str(path)])), []

    return build


case("device profile of binary bytes", "not UTF-8")(_device_file(bytes(range(128, 256))))
case("device profile that is a list", "must be a YAML mapping")(_device_file("- x86\n- arm\n"))
case("device profile with an unknown key", "toaster")(_device_file(
    "name: b\narchitecture: x86_64\nruntimes: [ai_edge_litert]\nprecisions: []\ntoaster: 1\n"))
case("device profile with an unknown precision", "no precision 'int3'")(_device_file(
    "name: b\narchitecture: x86_64\nruntimes: [ai_edge_litert]\nprecisions: [{format: tflite, precision: int3}]\n"))
case("device profile with an ssh host that is an option", "reach")(_device_file(
    "name: b\narchitecture: x86_64\nruntimes: [ai_edge_litert]\nprecisions: []\n"
    "reach: {kind: ssh, host: '-oProxyCommand=touch pwned'}\n"))

# -- data files ------------------------------------------------------------------------------------------

npz_case("npz x a 0-d array", "0-d array", x=np.float32(1), y=np.zeros(1, np.int64))
npz_case("npz x with NaN", "NaN", x=np.full((60, 8, 8), np.nan, np.float32), y=np.zeros(60, np.int64))
npz_case("npz x with Inf", "infinite", x=np.full((60, 8, 8), np.inf, np.float32), y=np.zeros(60, np.int64))
npz_case("npz x complex", "complex", x=np.ones((60, 8, 8), np.complex64), y=np.zeros(60, np.int64))
npz_case("npz x strings", "<U", x=np.array(["a"] * 60), y=np.zeros(60, np.int64))
npz_case("npz y fractions", "fractional", x=np.ones((60, 8, 8), np.float32),
         y=np.linspace(0, 0.99, 60).astype(np.float32))
npz_case("npz y negative", "negative labels", x=np.ones((60, 8, 8), np.float32), y=np.full(60, -1, np.int64))
npz_case("npz y one-hot", "one-hot", x=np.ones((60, 8, 8), np.float32), y=np.eye(10, dtype=np.int64)[np.arange(60)
                                                                                                     % 10])
npz_case("npz x and y of different lengths", "labels for 60 samples", x=np.ones((60, 8, 8), np.float32),
         y=np.zeros(50, np.int64))
npz_case("npz without y", "missing: y", x=np.ones((60, 8, 8), np.float32))
npz_case("npz object arrays", "not a readable .npz", x=np.array([object()] * 60, dtype=object),
         y=np.zeros(60, np.int64))


@case("npz of garbage bytes", "not a readable .npz")
def _garbage_npz(tmp, models):
    (tmp / "d.npz").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    return recipe_file(tmp, changed(data={"dataset": "npz", "path": str(tmp / "d.npz")})), []


@case("npz missing", "not found")
def _missing_npz(tmp, models):
    return recipe_file(tmp, changed(data={"dataset": "npz", "path": str(tmp / "none.npz")})), []


@case("mnist folder without idx files", "t10k|idx|mnist")
def _empty_mnist(tmp, models):
    (tmp / "mnist").mkdir()
    return recipe_file(tmp, changed(data={"dataset": "mnist", "path": str(tmp / "mnist")})), []


# -- model files -----------------------------------------------------------------------------------------


def model_case(name: str, pattern: str, model: str, **sections) -> None:
    def build(tmp, models):
        return recipe_file(tmp, changed(model={"path": str(models[model])}, **sections)), []

    case(name, pattern)(build)


model_case("a 5-class model on 10-class data", "outputs 5 classes", "five_classes")
model_case("a model with two outputs", "2 outputs", "two_outputs")
model_case("a model with two inputs", "2 inputs", "two_inputs")
model_case("an onnx model with a string input", "string|input", "string_onnx",
           exports=[{"format": "onnx", "precision": "fp32"}])
model_case("structured_prune on an onnx model", "Not applicable", "onnx", steps=[{"type": "structured_prune"}],
           exports=[{"format": "onnx", "precision": "fp32"}])
model_case("qat on an onnx model", "Not applicable", "onnx", steps=[{"type": "qat"}],
           exports=[{"format": "onnx", "precision": "fp32"}])
model_case("accuracy-aware int8 on an onnx model", "Not applicable", "onnx",
           exports=[{"format": "onnx", "quantize": {"max_accuracy_drop": 0.01}}])
model_case("only tflite exports from an onnx model", "TFLite export from an .onnx model", "onnx")
model_case("batch size on an onnx model", "keeps its own input", "onnx",
           exports=[{"format": "onnx", "precision": "fp32", "batch_size": 1}])
model_case("unknown input dimensions", "dimension 1", "variable")
model_case("garbage .keras file", "garbage.keras", "garbage_keras")
model_case("garbage .onnx file", "garbage.onnx", "garbage_onnx")
model_case("garbage .h5 file", "garbage.h5", "garbage_h5")
model_case("a folder that is no model", "no_model", "folder")
model_case("a missing model file", "missing.keras", "missing")
model_case("a .keras archive whose metadata is a list", "not a valid .keras model archive", "list_metadata")


@case("an input shape with the wrong rank", "does not fit")
def _bad_input_shape(tmp, models):
    return recipe_file(tmp, changed(model={"path": str(models["keras"]), "input_shape": [8, 8, 8]})), []


# -- the run directory -----------------------------------------------------------------------------------


def run_dir_case(name: str, pattern: str, where: Callable[[Path], str]) -> None:
    case(name, pattern)(lambda tmp, models: (recipe_file(tmp, changed()), ["-o", where(tmp)]))


def _file(tmp: Path, name: str = "taken") -> Path:
    (tmp / name).write_text("")
    return tmp / name


run_dir_case("-o an existing file", "is an existing file", lambda tmp: str(_file(tmp)))
run_dir_case("-o under a file", "is a file, not a folder", lambda tmp: str(_file(tmp) / "run"))
run_dir_case("-o with a 300-character name", "at most 255", lambda tmp: str(tmp / ("r" * 300)))
run_dir_case("-o in /proc", "cannot be written", lambda tmp: "/proc/edgepress-run")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Small model files, built once: tf_keras models on 8x8 digits, ONNX files, and files that are not models."""
    import onnx
    from onnx import TensorProto, helper

    from edgepress.compat import keras

    k = keras()
    folder = tmp_path_factory.mktemp("models")
    paths: dict[str, Path] = {}

    def save(name, model):
        paths[name] = folder / f"{name}.keras"
        model.save(paths[name])

    def mlp(classes: int):
        return k.Sequential([k.layers.Input((8, 8)), k.layers.Flatten(), k.layers.Dense(classes)])

    save("keras", mlp(10))
    save("five_classes", mlp(5))
    inputs = k.Input((8, 8))
    flat = k.layers.Flatten()(inputs)
    save("two_outputs", k.Model(inputs, [k.layers.Dense(10)(flat), k.layers.Dense(10)(flat)]))
    a, b = k.Input((8, 8)), k.Input((8, 8))
    save("two_inputs", k.Model([a, b], k.layers.Dense(10)(k.layers.Flatten()(k.layers.Add()([a, b])))))
    save("variable", k.Sequential([k.layers.Input((None, 8)), k.layers.LSTM(4), k.layers.Dense(10)]))

    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [64, 10], np.zeros(640, np.float32))])
    paths["onnx"] = folder / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), paths["onnx"])
    strings = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "s",
                                [helper.make_tensor_value_info("x", TensorProto.STRING, [None])],
                                [helper.make_tensor_value_info("y", TensorProto.STRING, [None])])
    paths["string_onnx"] = folder / "strings.onnx"
    onnx.save(helper.make_model(strings, opset_imports=[helper.make_opsetid("", 17)]), paths["string_onnx"])
    for suffix in ("keras", "onnx", "h5"):
        paths[f"garbage_{suffix}"] = folder / f"garbage.{suffix}"
        paths[f"garbage_{suffix}"].write_bytes(b"\x00garbage" * 50)
    paths["folder"] = folder / "no_model"
    paths["folder"].mkdir()
    (paths["folder"] / "readme.txt").write_text("not a model")
    paths["missing"] = folder / "missing.keras"
    import zipfile

    paths["list_metadata"] = folder / "list_metadata.keras"
    with zipfile.ZipFile(paths["list_metadata"], "w") as archive:
        archive.writestr("metadata.json", "[]")
        archive.writestr("config.json", "{}")
    return paths


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_cleanly(name, tmp_path, models):
    build, pattern = CASES[name]
    recipe, args = build(tmp_path, models)
    out = tmp_path / "run"
    args = args or ["-o", str(out)]
    result = runner.invoke(app, ["run", str(recipe), *args])
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert re.search(pattern, message), message
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_the_corpus_is_large():
    assert len(CASES) >= 100


# -- properties ------------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=3), max_leaves=10)
sections = st.fixed_dictionaries({}, optional={
    "name": values, "model": st.dictionaries(st.sampled_from(["zoo", "path", "seed", "train_epochs", "x"]), values),
    "data": st.dictionaries(st.sampled_from(["dataset", "seed", "test_size", "calibration_samples"]), values),
    "steps": st.lists(st.dictionaries(st.sampled_from(["type", "target_sparsity", "layers"]), values), max_size=2),
    "exports": st.lists(st.dictionaries(st.sampled_from(["format", "precision", "sparse", "quantize"]), values),
                        max_size=2),
    "gates": st.dictionaries(st.sampled_from(["max_accuracy_drop", "max_bytes", "require"]), values),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sections)
def test_any_recipe_document_is_accepted_or_refused_with_a_message(raw):
    try:
        Recipe.from_dict(raw)
    except EdgepressError as e:
        assert str(e).startswith("Recipe recipe is invalid")


@settings(max_examples=300, deadline=None)
@given(values)
def test_any_gate_value_is_a_fraction_or_a_message(value):
    try:
        recipe = Recipe.from_dict({"model": {"zoo": "seed_mlp"}, "gates": {"max_accuracy_drop": value}})
    except EdgepressError as e:
        assert "max_accuracy_drop" in str(e)
    else:
        drop = recipe.gates.max_accuracy_drop
        assert drop is None or 0 <= drop <= 1


@pytest.fixture(scope="module")
def artifact(models, tmp_path_factory) -> Path:
    from edgepress.deploy import export_tflite
    from edgepress.models.loading import load_model

    return export_tflite(load_model(models["keras"]), tmp_path_factory.mktemp("bench") / "m_fp32.tflite").path


def _bench_data(tmp: Path, kind: str) -> list[str]:
    path = tmp / "d.npz"
    if kind == "missing":
        return ["--data", str(tmp / "none.npz")]
    if kind == "object arrays":
        np.savez(path, x=np.array([object()] * 3, dtype=object), y=np.zeros(3))
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)))
    elif kind == "nan":
        np.savez(path, x=np.full((3, 8, 8), np.nan, np.float32), y=np.zeros(3, np.int64))
    else:  # a device profile of binary bytes
        (tmp / "board.yaml").write_bytes(bytes(range(128, 256)))
        return ["--device", str(tmp / "board.yaml")]
    return ["--data", str(path)]


@pytest.mark.parametrize("kind, pattern", [("missing", "not found"), ("object arrays", "not a readable .npz"),
                                           ("garbage", "not a readable .npz"), ("nan", "NaN"),
                                           ("device", "not UTF-8")])
def test_bench_refuses_bad_input_cleanly(artifact, tmp_path, kind, pattern):
    result = runner.invoke(app, ["bench", str(artifact), *_bench_data(tmp_path, kind), "--runs", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "bug" not in result.output, result.output
    assert re.search(pattern, " ".join(result.output.split()))
