"""Accuracy-aware int8: quantize within an accuracy budget, trying remedies before keeping layers in float.

    result = edgepress.quantize.quantize_to_budget(model, "tflite", "out/", x_calibration, x_eval, y_eval,
                                                   max_accuracy_drop=0.005)

It sits above edgepress.compress (its remedy is the equalize step) and edgepress.deploy (it exports every artifact
it tries); its options are edgepress.specs.quantize.
"""

from edgepress.quantize.accuracy_aware import QuantizeResult, quantize_to_budget, write_sensitivity

__all__ = ["QuantizeResult", "quantize_to_budget", "write_sensitivity"]
