"""The model a run starts from: its input made fully known, and the recipe reduced to what applies to it.

A Keras model takes every step. A graph (`edgepress.models.graphs`: a plain TF SavedModel or an .onnx
file) is exported and measured only: its steps are refused before any work, naming each and why, and
exports it cannot have are left out with a note for the report.
"""

from __future__ import annotations

from edgepress.recipe import Recipe

# What each compression step needs from the model, for the message that refuses it on a graph.
_STEP_NEEDS = {
    "prune": "tfmot magnitude pruning wraps Keras layers and fine-tunes them",
    "structured_prune": "it removes channels from Keras layers and rebuilds the Keras model",
    "qat": "tfmot quantization-aware training wraps Keras layers and retrains them",
    "distill": "it trains a Keras student model on the model's outputs",
    "cluster": "tfmot weight clustering wraps Keras layers and fine-tunes them",
}


def applicable(model, recipe: Recipe) -> tuple[Recipe, list[str]]:
    """The recipe reduced to what applies to `model`, and notes on what was left out.

    A graph (plain SavedModel, .onnx) has no Keras layers: its steps and accuracy-aware exports are
    refused (EdgepressError, before any work), and an .onnx model's TFLite exports are left out with a
    note, since no ONNX-to-TFLite converter is available. A Keras model's calibrated TFLite exports are
    refused when its layers would crash the calibrator (see check_calibratable).
    """
    from edgepress.deploy.tflite import CALIBRATED, check_calibratable
    from edgepress.errors import EdgepressError
    from edgepress.models.graphs import TFLITE_FROM_ONNX, Graph, TorchGraph

    if not isinstance(model, TorchGraph) and any(e.layout is not None for e in recipe.exports):
        raise EdgepressError(
            f"layout on an export of {getattr(model, 'path', model.name)}: layout chooses the image layout of TFLite "
            "files from a PyTorch model (NCHW or NHWC); this model is not one, and its files keep its own layout. "
            "Remove layout from its exports."
        )
    if not isinstance(model, Graph):
        if not any(step.type == "distill" for step in recipe.steps):  # a student has layers of its own
            for e in recipe.exports:
                if e.format == "tflite" and e.precision in CALIBRATED:
                    check_calibratable(model, e.precision, e.batch_size)
        return recipe, []
    refused = [f"{s.type} ({_STEP_NEEDS.get(s.type, 'it needs a Keras model')})" for s in recipe.steps]
    refused += [f"exports[{i}].quantize (accuracy-aware quantization keeps chosen Keras layers in float)"
                for i, e in enumerate(recipe.exports) if e.quantize is not None]
    if refused:
        raise EdgepressError(
            f"Not applicable to {model.path}: {'; '.join(refused)}. They need a Keras model, and "
            f"{model.why_no_steps}. Remove them from the recipe; its exports (post-training quantization included) "
            "and measurements apply."
        )
    notes = []
    exports = recipe.exports
    if isinstance(model, TorchGraph):  # TFLite through litert-torch, ONNX through torch.onnx
        from edgepress.deploy.torch_tflite import check_torch_exports

        check_torch_exports(model, exports)
    fixed = [f"onnx {e.precision}" for e in exports if model.kind == "onnx" and e.format == "onnx" and e.batch_size]
    if fixed:
        raise EdgepressError(
            f"batch_size on {', '.join(fixed)}: {model.path} is already ONNX and keeps its own input shape "
            f"{shape_text(model.input_shape)}. Remove batch_size from its ONNX exports."
        )
    if model.kind == "onnx" and any(e.format == "tflite" for e in exports):
        left_out = ", ".join(f"tflite {e.precision}" for e in exports if e.format == "tflite")
        notes.append(f"Left out {left_out}: {TFLITE_FROM_ONNX}")
        exports = [e for e in exports if e.format != "tflite"]
        if not exports:
            raise EdgepressError(
                f"{model.path} is an ONNX model and the recipe asks for TFLite exports only. {TFLITE_FROM_ONNX} "
                "Ask for ONNX exports: {format: onnx, precision: fp32 | fp16 | int8_dynamic | int8_static}."
            )
    return recipe.model_copy(update={"exports": exports}), notes


def fixed_input(model, input_shape: list[int] | None, what: str):
    """`model` with every input dimension but the batch known: as it is, or fixed to the recipe's input_shape."""
    from edgepress.errors import EdgepressError
    from edgepress.models.graphs import Graph

    sample = tuple(model.input_shape[1:])
    unknown = [i for i, d in enumerate(sample, start=1) if d is None]
    if input_shape is None:
        if unknown:
            example = "[" + ", ".join("N" if d is None else str(d) for d in sample) + "]"
            plural = len(unknown) > 1
            raise EdgepressError(
                f"The input of {what} has shape {shape_text(model.input_shape)}: dimension{'s' if plural else ''} "
                f"{', '.join(map(str, unknown))} (after the batch, dimension 0) {'are' if plural else 'is'} "
                "unknown, and the data, the calibration and the TFLite converter need every dimension but the batch "
                f"fixed. Set them in the recipe: `model: {{input_shape: {example}}}` with N the size your data has "
                "(one sample's shape, no batch), or build the model with a fixed input shape."
            )
        return model
    if isinstance(model, Graph):
        return model.with_inputshape_text(input_shape)
    fits = len(input_shape) == len(sample)
    if not fits or any(d is not None and d != s for d, s in zip(sample, input_shape, strict=True)):
        raise EdgepressError(
            f"model.input_shape {list(input_shape)} does not fit the input of {what}, which is "
            f"{shape_text(sample)} per sample: give one size per dimension, equal to the known ones."
        )
    if not unknown:
        return model
    from edgepress.compat import keras

    # The same layers and weights on a fixed-shape Input.
    fixed_input = keras().Input(tuple(input_shape), dtype=model.inputs[0].dtype)
    fixed = keras().models.clone_model(model, input_tensors=fixed_input)
    fixed.set_weights(model.get_weights())
    return fixed


def shape_text(shape) -> str:
    """(?, 28, 28) for a shape with unknown dimensions."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def kind(model) -> str:
    from edgepress.models.graphs import Graph

    return model.kind if isinstance(model, Graph) else "keras"
