"""The on-device runner against real models: a small Keras CNN trained on sklearn's digits,
converted to fp32 and full-int8 TFLite and to ONNX, run in LiteRT and onnxruntime."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import edgepress.compat  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from edgepress.compat import keras, tensorflow
from edgepress.deploy import runner

RUNNER = Path(runner.__file__)


def _build_cnn(K, batch_size=None):
    return K.Sequential(
        [
            K.layers.Input((8, 8, 1), batch_size=batch_size),
            K.layers.Conv2D(8, 3, activation="relu"),
            K.layers.Flatten(),
            K.layers.Dense(10, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Train once, convert once: fp32/int8/fixed-batch TFLite, ONNX, and an eval.npz of held-out digits."""
    from sklearn.datasets import load_digits

    tf, K = tensorflow(), keras()
    import tf2onnx

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    K.utils.set_random_seed(0)
    model = _build_cnn(K)
    model.compile(optimizer=K.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    keras_probs = model.predict(x_test, verbose=0)

    out = tmp_path_factory.mktemp("runner_models")
    paths = SimpleNamespace(
        fp32=out / "fp32.tflite",
        int8=out / "int8.tflite",
        fixed=out / "fixed_batch4.tflite",
        onnx=out / "model.onnx",
        eval=out / "eval.npz",
    )
    paths.fp32.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x_train[i : i + 1]] for i in range(200))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    paths.int8.write_bytes(converter.convert())

    # The same weights behind an input whose batch is fixed at 4: the runner has to loop, and pad
    # the last chunk (397 test rows are 99 batches of 4 and one row).
    fixed = _build_cnn(K, batch_size=4)
    fixed.set_weights(model.get_weights())
    paths.fixed.write_bytes(tf.lite.TFLiteConverter.from_keras_model(fixed).convert())

    tf2onnx.convert.from_keras(
        model,
        input_signature=(tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),),
        opset=17,
        output_path=str(paths.onnx),
    )
    np.savez(paths.eval, x=x_test, y=y_test)
    return SimpleNamespace(
        paths=paths,
        x_test=x_test,
        y_test=y_test,
        keras_probs=keras_probs,
        keras_accuracy=float(np.mean(keras_probs.argmax(-1) == y_test)),
    )


def _run_cli(*args, python_args=(), **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python_args, str(RUNNER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_the_model_learned_something(models):
    # Every accuracy comparison below is only meaningful if the model is far above chance (10%).
    assert models.keras_accuracy > 0.7


@pytest.mark.parametrize("name", ["fp32", "onnx"])
def test_float_artifacts_match_keras(models, name):
    model = runner.open_model(str(getattr(models.paths, name)))
    got = model.predict(models.x_test)

    assert got.dtype == np.float32 and got.shape == models.keras_probs.shape
    assert np.max(np.abs(got - models.keras_probs)) < 1e-4
    assert np.array_equal(got.argmax(-1), models.keras_probs.argmax(-1))
    assert model.input_shape == [-1, 8, 8, 1]
    assert model.input_dtype == "float32"
    assert model.load_ms > 0
    if name == "onnx":
        assert (model.runtime, model.providers) == ("onnxruntime", ["CPUExecutionProvider"])
    else:
        assert (model.runtime, model.providers) == ("ai_edge_litert", [])


def test_int8_model_is_quantized_and_as_accurate_as_keras(models):
    model = runner.open_model(str(models.paths.int8))
    assert model.input_dtype == "int8"

    probs = model.predict(models.x_test)
    # Dequantized softmax outputs: probabilities, not raw int8 codes.
    assert probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert np.allclose(probs.sum(-1), 1.0, atol=0.05)
    accuracy = float(np.mean(probs.argmax(-1) == models.y_test))
    assert abs(accuracy - models.keras_accuracy) <= 0.03
    assert np.mean(probs.argmax(-1) == models.keras_probs.argmax(-1)) >= 0.95


@pytest.mark.parametrize("name", ["fp32", "int8", "fixed", "onnx"])
def test_predict_gives_the_same_rows_at_any_batch_size(models, name):
    model = runner.open_model(str(getattr(models.paths, name)))
    x = models.x_test
    whole = model.predict(x)
    for n in (1, 3, 7):
        assert np.allclose(model.predict(x[:n]), whole[:n], atol=1e-5)
    # run_batch takes float input too, and returns the raw output of one (batched) call.
    assert np.allclose(model.to_float(model.run_batch(x[:5])), whole[:5], atol=1e-5)


def test_fixed_batch_model_runs_at_other_batches_with_a_warning(models):
    model = runner.open_model(str(models.paths.fixed))
    assert model.input_shape == [4, 8, 8, 1] and model.fixed_batch == 4
    # Its outputs are the float model's, fed four rows at a time with the padding's outputs dropped.
    assert np.allclose(model.predict(models.x_test), models.keras_probs, atol=1e-4)

    result = runner.benchmark(str(models.paths.fixed), models.x_test, models.y_test, runs=5, warmup=1, batch=6)
    assert any("fixed at 4" in w and "2 invocations" in w for w in result["runtime"]["warnings"])
    assert result["accuracy"] == pytest.approx(float(np.mean(models.keras_probs.argmax(-1) == models.y_test)))


@pytest.mark.parametrize("name", ["fp32", "int8", "onnx"])
def test_benchmark_reports_sane_numbers(models, name):
    path = getattr(models.paths, name)
    result = runner.benchmark(
        str(path), models.x_test, models.y_test, runs=30, warmup=3, threads=2, batch=2, with_predictions=True
    )
    assert json.loads(json.dumps(result)) == result

    assert result["runner_version"] == runner.RUNNER_VERSION == 1
    assert result["artifact"] == {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
    }
    assert result["threads"] == 2 and result["batch"] == 2
    assert result["load_ms"] > 0

    lat = result["latency_ms"]
    assert (lat["runs"], lat["warmup"]) == (30, 3)
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0

    mem = result["memory"]
    assert mem["baseline_rss_bytes"] > 0
    assert mem["peak_rss_bytes"] >= mem["baseline_rss_bytes"]
    assert mem["model_rss_bytes"] >= 0

    samples = len(models.x_test)
    predictions = np.array(result["predictions"])
    assert result["samples"] == samples and predictions.shape == (samples,)
    assert result["accuracy"] == pytest.approx(float(np.mean(predictions == models.y_test)))
    assert sum(c["n"] for c in result["per_class"].values()) == samples
    assert sum(c["correct"] for c in result["per_class"].values()) == int(np.sum(predictions == models.y_test))
    assert sorted(result["per_class"], key=int) == [str(c) for c in range(10)]
    assert abs(result["accuracy"] - models.keras_accuracy) <= 0.03

    assert len(result["output_checksum"]) == 64
    assert set(result["host"]) == {"cpu", "machine", "cores", "python", "numpy", "load_before", "load_after"}
    assert result["host"]["cpu"] and result["host"]["cores"] == os.cpu_count() and result["host"]["load_after"] >= 0
    low, high = lat["p50_ci"]
    assert lat["min"] <= low <= lat["p50"] <= high <= lat["max"] and lat["confidence"] == 0.95
    assert lat["p90_ci"][0] <= lat["p90"] <= lat["p90_ci"][1]
    assert len(lat["times_ms"]) == 30 and np.median(lat["times_ms"]) == pytest.approx(lat["p50"], abs=1e-5)


def test_benchmark_without_data_times_a_deterministic_random_input(models):
    first = runner.benchmark(str(models.paths.int8), runs=3, warmup=0, batch=3)
    second = runner.benchmark(str(models.paths.int8), runs=3, warmup=0, batch=3)
    assert (first["samples"], first["accuracy"], first["per_class"]) == (0, None, {})
    assert "predictions" not in first
    # Same seed, same input, same outputs.
    assert first["output_checksum"] == second["output_checksum"]


def test_missing_onnx_provider_falls_back_to_cpu_with_a_warning(models):
    import onnxruntime

    missing = next(
        p
        for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider")
        if p not in onnxruntime.get_available_providers()
    )
    result = runner.benchmark(str(models.paths.onnx), runs=2, warmup=0, providers=[missing])
    assert result["runtime"]["providers"] == ["CPUExecutionProvider"]
    assert len(result["runtime"]["warnings"]) == 1 and missing in result["runtime"]["warnings"][0]

    model = runner.open_model(str(models.paths.onnx), providers=[missing, "CPUExecutionProvider"])
    assert model.providers == ["CPUExecutionProvider"]
    assert any(missing in w for w in model.warnings)


@pytest.mark.parametrize("name", ["int8", "onnx"])
def test_cli_json_agrees_with_the_python_api(models, name):
    path = getattr(models.paths, name)
    proc = _run_cli(path, "--data", models.paths.eval, "--runs", 5, "--warmup", 1, "--predictions", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout

    in_process = runner.benchmark(str(path), models.x_test, models.y_test, runs=5, warmup=1, with_predictions=True)
    assert result["accuracy"] == in_process["accuracy"]
    assert result["predictions"] == in_process["predictions"]
    assert result["output_checksum"] == in_process["output_checksum"]
    assert result["latency_ms"]["runs"] == 5


def test_cli_prints_a_readable_summary(models):
    proc = _run_cli(models.paths.fp32, "--data", models.paths.eval, "--runs", 5)
    assert proc.returncode == 0, proc.stderr
    assert "latency" in proc.stdout and "p50" in proc.stdout
    assert "% on 397 samples" in proc.stdout


def _bad_inputs(models, tmp: Path) -> dict:
    """name -> (CLI args, words the error message must contain)."""
    unknown = tmp / "model.pb"
    unknown.write_bytes(b"not a model")
    corrupt = tmp / "corrupt.tflite"
    corrupt.write_bytes(models.paths.fp32.read_bytes()[:100])
    no_x = tmp / "no_x.npz"
    np.savez(no_x, inputs=models.x_test)
    flat = tmp / "flat.npz"
    np.savez(flat, x=models.x_test.reshape(len(models.x_test), 64))
    return {
        "missing artifact": ([tmp / "nope.tflite"], ["nope.tflite", "does not exist"]),
        "unknown extension": ([unknown], ["model.pb", ".pb", ".tflite and .onnx"]),
        "corrupt model": ([corrupt], ["corrupt.tflite", "could not load"]),
        "missing data": ([models.paths.fp32, "--data", tmp / "nope.npz"], ["nope.npz", "does not exist"]),
        "npz without x": ([models.paths.fp32, "--data", no_x], ["no_x.npz", "no array 'x'", "inputs"]),
        "wrong sample shape": ([models.paths.onnx, "--data", flat], ["(64,)", "(8, 8, 1)"]),
    }


@pytest.mark.parametrize(
    "case",
    ["missing artifact", "unknown extension", "corrupt model", "missing data", "npz without x", "wrong sample shape"],
)
def test_cli_bad_input_is_a_one_line_error_with_exit_code_2(models, tmp_path, case):
    args, words = _bad_inputs(models, tmp_path)[case]
    proc = _run_cli(*args, "--json")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("runner.py: error:")]
    assert len(errors) == 1
    for word in words:
        assert word in errors[0]


@pytest.mark.parametrize(
    ("name", "install"), [("fp32", "pip install ai-edge-litert"), ("onnx", "pip install onnxruntime")]
)
def test_cli_without_a_runtime_says_what_to_install(models, tmp_path, name, install):
    # A device with Python and numpy only: `-S` drops site-packages, PYTHONPATH brings numpy back.
    site = Path(np.__file__).parent.parent
    device = tmp_path / "site"
    device.mkdir()
    for entry in ("numpy", "numpy.libs"):
        if (site / entry).exists():
            (device / entry).symlink_to(site / entry)
    env = {**os.environ, "PYTHONPATH": str(device)}
    proc = _run_cli(getattr(models.paths, name), "--runs", 1, python_args=("-S",), env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "No " in proc.stderr and install in proc.stderr


def test_running_a_tflite_file_imports_no_tensorflow(models, tmp_path):
    # Copied alone into a directory, as on a device, and run as a script.
    script = tmp_path / "runner.py"
    shutil.copy(RUNNER, script)
    wrapper = (
        "import json, runpy, sys\n"
        f"sys.argv = [{str(script)!r}, {str(models.paths.fp32)!r}, '--runs', '2', '--json']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = ('tensorflow', 'tf_keras', 'keras', 'edgepress')\n"
        "print('LOADED=' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runtime"]["name"] == "ai_edge_litert"
    loaded = [line for line in proc.stderr.splitlines() if line.startswith("LOADED=")]
    assert loaded == ["LOADED=[]"]


def test_runner_is_python_3_9_code():
    # The runner promises Python 3.9 on the device. Its grammar is checked here always; a real 3.9
    # interpreter (pyenv's, when this machine has one) also compiles it. Without numpy and a runtime
    # for 3.9 here, the run itself is covered by the 3.11 tests above.
    import ast
    import glob

    ast.parse(RUNNER.read_text(), feature_version=(3, 9))
    python39 = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    if not python39:
        pytest.skip("no Python 3.9 interpreter on this machine; the grammar check above ran")
    done = subprocess.run([python39[-1], "-c", f"compile(open({str(RUNNER)!r}).read(), 'runner.py', 'exec')"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- the timing loop: interleaved rounds, adaptive runs, bootstrap intervals -----------------------------------


def test_time_interleaved_gives_every_callable_a_block_of_runs_per_round():
    log = []
    times, stopped = runner.time_interleaved([lambda: log.append("a"), lambda: log.append("b")], runs=10)
    assert [len(t) for t in times] == [10, 10] and stopped == ["runs", "runs"]
    # 10 runs over at least MIN_ROUNDS = 5 rounds: blocks of 2, a then b in each round.
    assert "".join(log) == "aabb" * 5
    assert all(t > 0 for t in times[0])


def test_time_interleaved_adds_runs_until_the_interval_is_narrow_enough(models):
    model = runner.open_model(str(models.paths.fp32))
    call = model.timer(models.x_test[:1])
    # A loose target is met early, a target no measurement meets runs to max_runs, a time cap stops the rest.
    (loose,), why_loose = runner.time_interleaved([call], runs=20, max_runs=5000, target_ci_width=0.5)
    # The unmeetable target needs times that really vary: on a quiet machine the model's own times can repeat to the
    # timer's resolution, and an interval of width 0 meets any target. A call that sleeps a random 0-200 us cannot.
    jitter = random.Random(0)

    def jittery():
        time.sleep(jitter.random() * 2e-4)

    (capped,), why_capped = runner.time_interleaved([jittery], runs=20, max_runs=300, target_ci_width=1e-9)
    started = time.perf_counter()
    (timed,), why_timed = runner.time_interleaved([jittery], runs=20, max_runs=10**9, target_ci_width=1e-9,
                                                  max_seconds=0.5)
    elapsed = time.perf_counter() - started
    assert why_loose == ["target"] and 20 <= len(loose) < 5000
    low, high = runner.bootstrap_interval(loose, 50)
    assert high - low <= 0.5 * np.median(loose)
    assert why_capped == ["max_runs"] and len(capped) == 300
    assert why_timed == ["max_seconds"] and 0.5 <= elapsed < 5 and len(timed) > 20


def test_bootstrap_interval_holds_the_median_and_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    few, many = rng.exponential(1.0, 50) + 1, rng.exponential(1.0, 5000) + 1
    low_few, high_few = runner.bootstrap_interval(list(few), 50)
    low_many, high_many = runner.bootstrap_interval(list(many), 50)
    assert low_few <= np.median(few) <= high_few and low_many <= np.median(many) <= high_many
    assert high_many - low_many < (high_few - low_few) / 3  # about 1/sqrt(100) as wide
    assert runner.bootstrap_interval(list(few), 50) == (low_few, high_few)  # a fixed seed: same times, same interval


def test_cli_times_several_artifacts_interleaved(models):
    proc = _run_cli(models.paths.fp32, models.paths.onnx, "--data", models.paths.eval, "--runs", 10, "--warmup", 1,
                    "--max-runs", 400, "--target-ci-width", 0.3, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [a["artifact"]["path"] for a in result["artifacts"]] == [str(models.paths.fp32), str(models.paths.onnx)]
    assert [a["runtime"]["name"] for a in result["artifacts"]] == ["ai_edge_litert", "onnxruntime"]
    for a in result["artifacts"]:
        lat = a["latency_ms"]
        assert 10 <= lat["runs"] <= 400 and lat["stopped"] in ("target", "max_runs", "max_seconds")
        assert lat["p50_ci"][0] <= lat["p50"] <= lat["p50_ci"][1] and len(lat["times_ms"]) == lat["runs"]
    assert result["host"]["cores"] == os.cpu_count()

    text = _run_cli(models.paths.fp32, models.paths.onnx, "--runs", 5)
    assert text.returncode == 0 and text.stdout.count("p50") == 2 and "[" in text.stdout


def test_cli_checks_one_sha256_per_artifact(models):
    digest = hashlib.sha256(models.paths.fp32.read_bytes()).hexdigest()
    proc = _run_cli(models.paths.fp32, models.paths.onnx, "--expect-sha256", digest, "--json")
    assert proc.returncode == 2 and "once per artifact" in proc.stderr
    proc = _run_cli(models.paths.fp32, models.paths.onnx, "--expect-sha256", digest, "--expect-sha256", digest,
                    "--json")
    assert proc.returncode == 2 and "model.onnx" in proc.stderr and "damaged or stale" in proc.stderr
