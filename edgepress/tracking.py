"""Log a run to MLflow (optional extra: `pip install 'edgepress[mlflow]'`).

`log_run(results, run_dir, uri)` records, in one MLflow run of the experiment named after the recipe:
the recipe as params (flattened: `model.zoo`, `steps.0.type`, ...), every artifact's metrics per device
(`<device>/<artifact>/p50_ms`, `.../accuracy`, ...), the run's verdict, and every file of the run directory
as artifacts. `uri` is a tracking URI (`sqlite:///mlflow.db`, `http://host:5000`), or a folder: a local store
there (`FOLDER/mlflow.db` and `FOLDER/artifacts`; MLflow 3 no longer writes its old plain-file store).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from edgepress.errors import EdgepressError, first_line

# Per artifact row: metric name -> how to read it (None values are not logged).
_ROW_METRICS = {
    "accuracy": lambda r: r["metrics"].get("accuracy"),
    "accuracy_drop": lambda r: r["metrics"].get("accuracy_drop"),
    "agreement": lambda r: r["metrics"].get("agreement"),
    "perplexity": lambda r: r["metrics"].get("perplexity"),
    "p50_ms": lambda r: r["latency"].get("p50"),
    "p50_ci_low_ms": lambda r: (r["latency"].get("p50_ci") or [None, None])[0],
    "p50_ci_high_ms": lambda r: (r["latency"].get("p50_ci") or [None, None])[1],
    "p90_ms": lambda r: r["latency"].get("p90"),
    "p99_ms": lambda r: r["latency"].get("p99"),
    "runs": lambda r: r["latency"].get("runs"),
    "bytes": lambda r: r["bytes"],
    "gzip_bytes": lambda r: r["gzip_bytes"],
    "load_ms": lambda r: r.get("load_ms"),
    "peak_rss_mb": lambda r: _mib(r["memory"].get("peak_rss_bytes")),
    "passed": lambda r: float(bool(r.get("passed"))),
}
_PARAM_VALUE_MAX = 500  # MLflow's limit is larger in new servers, 500 in old ones


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def tracking_uri(uri: str) -> tuple[str, str | None]:
    """(tracking URI, artifact location or None for the server's default) for what the user gave."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri) or uri in ("databricks",):
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):]).resolve()
            return f"sqlite:///{db}", (db.parent / "mlartifacts").as_uri()
        return uri, None
    folder = Path(uri).resolve()
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise EdgepressError unless an http(s) tracking server at `uri` answers (its /health); local stores pass."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise EdgepressError(f"MLflow tracking server {uri} does not answer ({reason}): start it (`mlflow server`), "
                             "or give a local folder or sqlite:///FILE to --mlflow. The run's results are written."
                             ) from None


def flat_params(value, prefix: str = "") -> dict[str, str]:
    """A nested dict/list as MLflow params: dotted keys, string values (None left out, long values cut)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flat_params(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flat_params(v, f"{prefix}{i}."))
        return out if value else {prefix.rstrip("."): "[]"}
    if value is None:
        return {}
    text = str(value)
    return {prefix.rstrip("."): text if len(text) <= _PARAM_VALUE_MAX else text[: _PARAM_VALUE_MAX - 3] + "..."}


def run_metrics(results: dict) -> dict[str, float]:
    """Every artifact's metrics per device, as `<device>/<artifact>/<metric>`, and the run's own."""
    metrics: dict[str, float] = {"passed": float(bool(results.get("passed")))}
    accuracy = (results.get("source") or {}).get("metrics", {}).get("accuracy")
    if accuracy is not None:
        metrics["source/accuracy"] = float(accuracy)
    for row in results["artifacts"]:
        for name, read in _ROW_METRICS.items():
            value = read(row)
            if value is not None:
                metrics[f"{_key(row['device'])}/{_key(row['name'])}/{name}"] = float(value)
    return metrics


def _key(text: str) -> str:
    """A name as MLflow allows in keys (letters, digits, _ - . space /)."""
    return re.sub(r"[^\w\-. ]", "_", text)


def log_run(results: dict, run_dir: str | Path, uri: str) -> str:
    """Log `results` (a results.json's content) and the files of `run_dir` to MLflow at `uri`; the MLflow run id.

    Raises EdgepressError when MLflow is not installed, the server does not answer, or it refuses the run.
    """
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise EdgepressError("--mlflow needs MLflow: pip install 'edgepress[mlflow]'.") from None
    import time

    store, artifact_location = tracking_uri(uri)
    check_reachable(store)
    if store.startswith("sqlite:///"):
        Path(store[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    name = f"edgepress-{results['recipe']['name']}"
    try:
        client = MlflowClient(store)
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            name, artifact_location=artifact_location and f"{artifact_location}/{_key(name)}")
        run = client.create_run(experiment_id, run_name=Path(run_dir).name,
                                tags={"edgepress.version": str(results.get("edgepress_version")),
                                      "edgepress.passed": str(results.get("passed"))})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in flat_params(results["recipe"], "recipe.").items()]
        metrics = [Metric(k, v, now, 0) for k, v in run_metrics(results).items()]
        env = [RunTag(f"environment.{k}", str(v)) for k, v in (results.get("environment") or {}).items()]
        for start in range(0, max(len(params), len(metrics), len(env)), 100):  # MLflow takes 100 params a batch
            client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100],
                             tags=env[start:start + 100])
        client.log_artifacts(run_id, str(run_dir))
        client.set_terminated(run_id, "FINISHED" if results.get("passed") else "FAILED")
    except EdgepressError:
        raise
    except Exception as e:  # MlflowException, sqlalchemy and HTTP errors alike
        raise EdgepressError(f"MLflow at {uri} refused the run: {first_line(e)}. The run's results are written."
                             ) from None
    return run_id
