"""edgepress: compress trained models, export TFLite and ONNX artifacts, and measure them.

    report = edgepress.run(edgepress.Recipe.from_yaml("recipes/mnist_cnn.yaml"))
    report.check()   # raises GateFailed naming each gate that failed
    result = edgepress.tune(edgepress.Recipe.from_yaml("my.yaml"), "runs/tune")   # a recipe with a tune: section

The building blocks are `edgepress.compress`, `edgepress.deploy` and `edgepress.models`.
TensorFlow is imported only when a function needs it.
"""

from edgepress import compat as _compat  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TF import)
from edgepress.artifact import Artifact
from edgepress.errors import EdgepressError, GateFailed

__version__ = "0.1.0"

__all__ = ["Artifact", "EdgepressError", "GateFailed", "Recipe", "Report", "run", "tune", "__version__"]


def __getattr__(name: str):
    # Recipe, Report and run pull in pydantic and the API; load them on first use.
    if name == "Recipe":
        from edgepress.recipe import Recipe

        return Recipe
    if name == "Report":
        from edgepress.report import Report

        return Report
    if name == "run":
        from edgepress.api import run

        return run
    if name == "tune":  # edgepress.tune(recipe, run_dir): the subpackage, callable (see edgepress/tune/__init__.py)
        import edgepress.tune

        return edgepress.tune
    raise AttributeError(f"module 'edgepress' has no attribute {name!r}")
