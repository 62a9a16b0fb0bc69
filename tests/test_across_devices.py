"""The same artifact on two devices (edgepress/across.py), emulated devices in the verdict, a device's known failures
in the plan, --device on `edgepress run`, and an artifact a device's runner refuses kept as its own row."""

from __future__ import annotations

import numpy as np
import pytest

from edgepress.across import across_devices, across_text
from edgepress.devices import load_device
from edgepress.verdict import judge


def _row(device: str, name: str, accuracy, predictions, checksum="c", **extra) -> dict:
    return {"name": name, "device": device, "metrics": {"accuracy": accuracy, "agreement": 1.0},
            "predictions": predictions, "output_checksum": checksum, **extra}


def test_each_artifact_is_compared_with_its_first_device():
    rows = [_row("x86-host", "a.tflite", 0.75, [0, 1, 2, 3]), _row("x86-host", "b.onnx", 1.0, [0, 1, 2, 3]),
            _row("rpi5-emulated", "a.tflite", 0.5, [0, 1, 2, 0], checksum="d"),
            _row("rpi5-emulated", "b.onnx", 1.0, [0, 1, 2, 3])]

    entries = {e["artifact"]: e for e in across_devices(rows, budget=0.2)}

    a, b = entries["a.tflite"], entries["b.onnx"]
    assert (a["reference"], a["device"]) == ("x86-host", "rpi5-emulated")
    assert a["agreement"] == 0.75 and a["same_outputs"] is False and a["accuracy_change"] == pytest.approx(-0.25)
    assert a["flagged"]  # moved 25 pt, beyond the 20 pt budget
    assert b["agreement"] == 1.0 and b["same_outputs"] is True and not b["flagged"]
    assert "FLAGGED" in across_text(a) and "-25.00 pt" in across_text(a)
    assert "same outputs" in across_text(b) and "FLAGGED" not in across_text(b)


def test_without_a_budget_any_move_is_flagged_and_a_refused_artifact_is_named():
    rows = [_row("x86-host", "a.tflite", 0.75, [0, 1]), _row("arm", "a.tflite", 0.7, [0, 1]),
            _row("x86-host", "c.tflite", 0.5, [0, 1]),
            {**_row("arm", "c.tflite", None, None, checksum=None), "error": "no op FULLY_CONNECTED version 13"}]

    entries = {e["artifact"]: e for e in across_devices(rows, budget=None)}

    assert entries["a.tflite"]["flagged"]
    c = entries["c.tflite"]
    assert c["error"] and c["agreement"] is None and not c["flagged"]
    assert "FULLY_CONNECTED version 13" in across_text(c)


def _judged_row(device: str, name: str, p50: float, emulated: bool) -> dict:
    latency = {"p50": p50, "p50_ci": [p50, p50], "p90": p50, **({"emulated": True} if emulated else {})}
    return {"name": name, "device": device, "bytes": 100, "gzip_bytes": 90, "memory": {"peak_rss_bytes": None},
            "metrics": {"accuracy": 0.9, "accuracy_drop": 0.0, "agreement": 1.0}, "latency": latency}


def test_emulated_latency_is_neither_gated_nor_recommended_on():
    rows = [_judged_row("x86-host", "a", 1.0, False), _judged_row("rpi5-emulated", "a", 90.0, True)]
    results = {"artifacts": rows, "gates": {"max_accuracy_drop": 0.02, "max_p50_ms": 5, "require": "any"},
               "devices": {"x86-host": {"error": None}, "rpi5-emulated": {"error": None, "emulated": True}}}

    verdict = judge(results)

    assert verdict["best"] == {"x86-host": "a", "rpi5-emulated": None}
    assert "max_p50_ms" not in rows[1]["gates"] and rows[1]["passed"]  # 90 ms emulated is not a failed gate
    assert rows[0]["gates"]["max_p50_ms"]["passed"]
    assert verdict["passed"]


def test_the_emulated_profile_is_shipped_and_says_so():
    device = load_device("rpi5-emulated")
    assert device.emulated and device.architecture == "aarch64" and device.reach.kind == "ssh"
    assert not load_device("rpi5").emulated


def test_the_plan_warns_about_a_precision_a_device_is_known_not_to_run(tmp_path):
    import yaml

    from edgepress.plan import make_plan
    from edgepress.recipe import Recipe

    profile = load_device("rpi5-emulated").model_dump(mode="json")
    profile["known_failures"] = [{"format": "tflite", "precision": "int16x8", "reason": "no int16x8 kernels"}]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(profile))
    recipe = Recipe.from_dict({
        "name": "skew", "model": {"zoo": "seed_cnn", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 100, "test_size": 20, "calibration_samples": 10},
        "exports": [{"format": "tflite", "precision": "int16x8"}, {"format": "tflite", "precision": "fp32"}],
    }).with_overrides(devices=["x86-host", str(tmp_path / "old.yaml")])

    plan = make_plan(recipe, tmp_path / "run")

    assert [d.name for d in plan.devices] == ["x86-host", "rpi5-emulated"]
    warned = [n for n in plan.notes if "known not to run" in n]
    assert len(warned) == 1 and "tflite int16x8 on rpi5-emulated" in warned[0] and "no int16x8 kernels" in warned[0]


def test_an_artifact_the_runner_refuses_gets_its_own_error_and_the_others_are_measured(trained_cnn, digits, tmp_path):
    from edgepress.deploy.measure import measure_many
    from edgepress.deploy.tflite import export_tflite
    from edgepress.deploy.transports import RunnerRefused

    good = export_tflite(trained_cnn, tmp_path / "good.tflite", "fp32")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(good.path.read_bytes()[:1000])  # a file this runtime cannot load
    data = (digits.x_test[:20], digits.y_test[:20])
    reference = np.argmax(trained_cnn.predict(digits.x_test[:20], verbose=0), -1)

    results = measure_many([good, bad], data, "x86-host", runs=3, warmup=1, reference=reference, keep_going=True)

    assert results[0]["agreement"] is not None and results[0]["latency_ms"]["p50"] > 0
    assert "could not load it" in results[1]["error"] and results[1]["device"] == "x86-host"
    with pytest.raises(RunnerRefused, match="could not load it"):
        measure_many([good, bad], data, "x86-host", runs=3, warmup=1)
