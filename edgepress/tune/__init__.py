"""`edgepress tune`: search the compression and export space for the fastest artifact per device within budgets.

`spec` (the recipe's `tune:` section) is light; `study` (Optuna), `execute` (local and Ray) and `results`
(tune.json, Pareto front, report.html, best-<device>.yaml) import their heavy parts when they run.
"""

from __future__ import annotations


def tune(recipe, run_dir, progress=None, ray: str | None = None):
    """See `edgepress.tune.study.tune`."""
    from edgepress.tune.study import tune as _tune

    return _tune(recipe, run_dir, progress, ray)


def pareto_front(points, maximize=("accuracy",), minimize=("p50_ms", "bytes")):
    """See `edgepress.tune.results.pareto_front`."""
    from edgepress.tune.results import pareto_front as _front

    return _front(points, maximize, minimize)


class _CallableModule(__import__("types").ModuleType):
    """`edgepress.tune(...)` calls `tune`: the name is both this subpackage and the API function, and once the
    subpackage is imported Python binds `edgepress.tune` to the module, so the module itself is callable."""

    def __call__(self, recipe, run_dir, progress=None, ray: str | None = None):
        return tune(recipe, run_dir, progress, ray)


__import__("sys").modules[__name__].__class__ = _CallableModule
