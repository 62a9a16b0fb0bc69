"""int16x8 TFLite by LiteRT's quantizer (ai-edge-quantizer's static_wi8_ai16 recipe) from a float .tflite file.

    facts = static_16x8(Path("m_fp32.tflite"), Path("m_int16x8.tflite"), calibration, "NCHW", "NCHW")

The route for models the TFLite converter's own 16x8 mode cannot make: a PyTorch program (litert-torch makes int8
only), and attention models whose ops (NEG, SQUARED_DIFFERENCE of LayerNorm) that converter cannot quantize to 16x8
or quantizes into a file LiteRT cannot run. Ops the quantizer has no 16x8 kernel for stay float.
"""

from __future__ import annotations

import contextlib
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from edgepress.compat import quiet
from edgepress.errors import EdgepressError, first_line


def static_16x8(float_tflite: Path, out: Path, samples: np.ndarray, source_layout, layout) -> dict[str, Any]:
    """Write `float_tflite` with int16 activations and int8 weights (ai-edge-quantizer's static_wi8_ai16),
    calibrated on `samples` (in the source's layout, fed in the file's) one batch at a time; the facts."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    from edgepress.deploy.layout import to_layout

    runner = Interpreter(model_path=str(float_tflite))
    (key, signature), = runner.get_signature_list().items()
    (name,) = signature["inputs"]
    (detail,) = runner.get_input_details()
    batch = int(detail["shape"][0])
    feed = to_layout(samples, source_layout, layout).astype(detail["dtype"])
    data = {key: [{name: np.repeat(x[None], batch, axis=0)} for x in feed]}
    try:
        with quiet(), contextlib.redirect_stdout(sys.stderr):  # it prints progress
            q = quantizer.Quantizer(str(float_tflite), recipe.static_wi8_ai16())
            result = q.quantize(q.calibrate(data))
    except Exception as e:  # the quantizer raises ValueError, RuntimeError and flatbuffer errors
        raise EdgepressError(f"LiteRT's quantizer could not make an int16x8 model of {float_tflite.name}: "
                             f"{first_line(e)}. Export tflite int8 or dynamic instead.") from None
    out.write_bytes(bytes(result.quantized_model))
    return {"weights": "int8", "activations": "int16 (calibrated)", "calibration_samples": len(samples),
            "quantizer": f"ai-edge-quantizer {version('ai-edge-quantizer')}"}
