import json
import subprocess
import sys

import pytest

from edgepress.devices import load_device
from edgepress.errors import EdgepressError
from edgepress.plan import with_default_exports
from edgepress.recipe import Recipe, schema
from tests.conftest import MNIST, REPO


def test_shipped_recipes_validate():
    recipe = Recipe.from_yaml(REPO / "recipes" / "mnist_cnn.yaml")
    assert recipe.data.path == str(MNIST.resolve())  # relative to the recipe file
    assert [s.type for s in recipe.steps] == ["prune"]
    assert Recipe.from_yaml(REPO / "edgepress" / "demo.yaml").data.dataset == "digits"


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(EdgepressError) as e:
        Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "steps": [{"type": "prune", "sparsity": 0.5}]})
    assert "unknown key 'steps.0.prune.sparsity'" in str(e.value)
    assert "target_sparsity" in str(e.value) and "fine_tune_epochs" in str(e.value)


def test_unknown_top_level_key():
    with pytest.raises(EdgepressError, match=r"unknown key 'export'.*exports"):
        Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "export": []})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"model": {}}, "exactly one of model.zoo"),
        ({"model": {"zoo": "seed_cnn"}, "exports": [{"format": "tflite", "precision": "int4"}]}, "no precision 'int4'"),
        ({"model": {"zoo": "seed_cnn"}, "gates": {"max_accuracy_drop": "150%"}}, "between 0 and 1"),
        ({"model": {"zoo": "seed_cnn"}, "steps": [{"type": "shrink"}]}, "shrink"),
        ({"model": {"zoo": "seed_cnn"}, "steps": [{"type": "qat"}],
          "exports": [{"format": "onnx", "precision": "fp16"}]}, "already quantization-aware"),
    ],
)
def test_invalid_recipes_are_refused_with_the_reason(raw, message):
    with pytest.raises(EdgepressError, match=message):
        Recipe.from_dict(raw)


def test_gates_take_percentages():
    recipe = Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "gates": {"max_accuracy_drop": "0.5%"}})
    assert recipe.gates.max_accuracy_drop == pytest.approx(0.005)


def test_qat_without_exports_gets_the_exports_that_fit_it():
    # The defaults come from the target profiles, which the plan reads (the recipe reads no file).
    recipe = Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "steps": [{"type": "qat"}]})
    recipe = with_default_exports(recipe, [load_device("x86-host")])
    assert {(e.format, e.precision) for e in recipe.exports} == {("tflite", "int8"), ("tflite", "dynamic"),
                                                                 ("onnx", "fp32"), ("onnx", "int8_static")}


def test_validating_a_recipe_reads_no_file_and_imports_no_tensorflow():
    code = ("import sys, builtins; opened = []; real = builtins.open\n"
            "builtins.open = lambda f, *a, **k: (opened.append(str(f)), real(f, *a, **k))[1]\n"
            "from edgepress.recipe import Recipe\n"
            "Recipe.from_dict({'model': {'zoo': 'seed_cnn'}, 'targets': ['rpi4', 'x86-host'], "
            "'steps': [{'type': 'prune'}, {'type': 'qat'}]})\n"
            "loaded = [m for m in sys.modules if m.startswith(('tensorflow', 'edgepress.deploy', 'tf_keras'))]\n"
            "print(len(opened), loaded)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "[]"]


def test_overrides_replace_model_and_data(tmp_path):
    recipe = Recipe.from_yaml(REPO / "recipes" / "mnist_cnn.yaml").with_overrides(
        data=str(tmp_path), model=str(tmp_path / "m.keras"))
    assert recipe.data.path == str(tmp_path) and recipe.model.path == str(tmp_path / "m.keras")
    assert recipe.model.zoo is None


def test_bad_files(tmp_path):
    with pytest.raises(EdgepressError, match="not found"):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(EdgepressError, match="not valid YAML"):
        Recipe.from_yaml(tmp_path / "bad.yaml")


def test_schema_command_prints_the_json_schema():
    done = subprocess.run([sys.executable, "-m", "edgepress.cli", "schema"], capture_output=True, text=True)
    printed = json.loads(done.stdout)
    assert printed == schema()
    assert {"model", "data", "steps", "exports", "measure", "gates"} <= set(printed["properties"])
