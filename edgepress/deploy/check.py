"""The check every export gets: does the file compute what the model it came from computes?"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.compat import quiet
from edgepress.deploy import runner
from edgepress.errors import EdgepressError
from edgepress.limits import invoke_limit_s


def compare(source, path: Path, x: np.ndarray, artifact_x: np.ndarray | None = None) -> dict:
    """Top-1 agreement and max abs output difference between the model `source` (a Source) and the file on `x`.

    `artifact_x` is `x` as the file takes it, when its layout differs from the model's (NHWC from NCHW).
    """
    expected = source.predict(x)
    try:
        with quiet():
            # edgepress's own limit on one call (a TFLite WHILE or an ONNX Loop that never ends), not the device's.
            got = runner.open_model(str(path), invoke_limit_s=invoke_limit_s()).predict(
                x if artifact_x is None else artifact_x)
    except runner.RunnerError as e:
        raise EdgepressError(f"The exported file could not be checked: {e}") from None
    return {
        "samples": len(x),
        "top1_agreement": float(np.mean(np.argmax(got, -1) == np.argmax(expected, -1))),
        "max_abs_diff": float(np.max(np.abs(got - expected))),
    }


def calibration_inputs(source, calibration: np.ndarray | None, export: str) -> np.ndarray:
    """Validated calibration inputs for a quantizing export named `export` (e.g. "TFLite int8")."""
    if calibration is None or len(calibration) == 0:
        raise EdgepressError(
            f"{export} export needs calibration data to measure activation ranges, and none was given: "
            "pass calibration=<inputs from your data> (recipes take them from data.calibration_samples)."
        )
    expected = tuple(source.input_shape[1:])
    if tuple(calibration.shape[1:]) != expected:
        raise EdgepressError(
            f"Calibration samples have shape {tuple(calibration.shape[1:])} but the model '{source.name}' takes "
            f"{expected}. Give calibration inputs preprocessed like the model's input."
        )
    return calibration.astype(np.float32)
