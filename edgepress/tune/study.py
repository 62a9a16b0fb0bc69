"""`tune(recipe)`: an Optuna study over plain recipes, each trial run and measured on every target device.

    result = edgepress.tune(edgepress.Recipe.from_yaml("my.yaml"), "runs/tune")   # the recipe has a tune: section
    result.best["x86-host"]   # the fastest artifact within the recipe's gates, and its best-x86-host.yaml

The study is multi-objective (accuracy up; p50 on each device and bytes down), the recipe's gates are its
constraints, and its storage is `study.db` (SQLite) in the run directory: a killed tune resumes where it
stopped with the same run directory, and a finished one is extended by asking for more trials. The source model
is measured once (`source/`); a trial whose accuracy after one fine-tune epoch is hopeless is stopped there;
a trial identical to one already measured (same steps and exports) is not run again.

With `tune.validation_size: N` the last N samples of the recipe's training split are held out: the tune writes the
training split to `validation.npz` and every trial (and the source's measurement) runs on it with those N as its
test split, so trials neither train nor calibrate on them and the budgets are judged on them, not on the test images.
Each device's pick is then exported again from its trial's final model and measured once on the recipe's own test
split (`test/<device>/`; tune.json best[device].test_accuracy); best-<device>.yaml trains on the same held-in
samples and tests on the test split.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

from edgepress import files, verdict
from edgepress.compress.step import registered
from edgepress.errors import EdgepressError, GateFailed
from edgepress.specs.lm import LMSpec
from edgepress.specs.tune import MAX_TRIALS, TuneSpec
from edgepress.text import ms, percent
from edgepress.tune import results as out
from edgepress.tune.execute import executor_for
from edgepress.tune.space import Space, export_of_row, exports_for, key_of, losing_exports, recipe_for

STUDY_NAME = "edgepress-tune"
PENALTY = 1e9  # an objective a trial could not measure (its device dropped): worse than anything measured


@dataclass
class TuneResult:
    """What a tune found: the content of tune.json and the run directory holding it."""

    results: dict
    run_dir: Path

    @property
    def best(self) -> dict[str, dict | None]:
        """Per device, the recommended artifact (the fastest within the budgets, ties to the smaller) or None."""
        return self.results["best"]

    @property
    def passed(self) -> bool:
        return self.results["passed"]

    def check(self) -> None:
        """Raise GateFailed naming, for each device without an artifact within the budgets, the closest one."""
        if self.passed:
            return
        lines = []
        for device, point in self.results["closest"].items():
            over = ", ".join(f"{gate} by {miss:.0%}" for gate, miss in point["misses"].items() if miss > 0)
            lines.append(f"{device}: no artifact within the budgets; closest: trial {point['trial']} "
                         f"{point['artifact']} (accuracy {percent(point['accuracy'])}, p50 "
                         f"{ms(point['p50_ms'])} ms, {point['bytes']:,} bytes; over {over or 'nothing measured'})")
        lines += [f"device {d} failed: {why}" for d, why in self.results["dropped"].items()]
        raise GateFailed("the tune found no artifact within the budgets on every device:\n  " + "\n  ".join(lines))


def tune(recipe, run_dir: str | Path, progress=None, ray: str | None = None) -> TuneResult:
    """Search, for each of the recipe's targets, the fastest artifact within its gates; see the module doc.

    `recipe.tune` (a TuneSpec; default TuneSpec()) sets trials, time budget and space; the recipe's steps must be
    empty (the tune chooses them). `ray`: 'auto' or a Ray head's HOST:PORT to run trials as Ray tasks.
    Everything is written into `run_dir`; run it again with the same `run_dir` to resume or extend.
    """
    from edgepress.api import Progress

    progress = progress or Progress()
    spec: TuneSpec = recipe.tune or TuneSpec()
    if recipe.steps:
        raise EdgepressError("A recipe with a tune: section gets its steps from the tune; remove `steps:` (or run "
                             "the recipe with `edgepress run` instead).")
    started = time.monotonic()
    deadline = None if spec.time_budget is None else started + spec.time_budget
    run_dir = Path(run_dir)
    devices = [t.device() for t in recipe.targets]
    names = [d.name for d in devices]
    targets = {d.name: t.model_dump(mode="json", exclude_none=True) for d, t in zip(devices, recipe.targets,
                                                                                    strict=True)}
    gates = recipe.gates
    decoder = _decoder_of(recipe)
    if decoder is not None and recipe.lm is None:  # a run measures a decoder as an LM (lm:'s defaults): so is a tune
        recipe = recipe.model_copy(update={"lm": LMSpec.for_positions(decoder.config.max_len)})
    lm = recipe.lm is not None  # a decoder LM: perplexity and decode tokens/s are its objectives
    if lm:
        budgets = {"max_perplexity": gates.max_perplexity, "min_decode_tokens_per_s": gates.min_decode_tokens_per_s,
                   "max_bytes": gates.max_bytes}
    else:
        budgets = {"max_accuracy_drop": gates.max_accuracy_drop, "max_p50_ms": gates.max_p50_ms,
                   "max_bytes": gates.max_bytes}
    float_ops = (_float_op_kinds(recipe) if not lm and any(d.runs("tflite") for d in devices)
                 and (spec.space.float_ops or spec.space.precisions) else [])
    space = Space.of(spec, devices, gates.max_accuracy_drop, recipe.lm.cache_len if lm else None, float_ops)
    split = _validation_split(recipe, spec.validation_size, lm)  # refused here, before anything is written
    _check_tune_dir(run_dir)
    if run_dir.is_dir():  # a killed tune's temporaries, at any depth (tune.json's, a trial's artifacts')
        files.clean_leftovers(run_dir)
    db = run_dir / "study.db"
    # A corrupt study file stops the tune before any work.
    study = _open_study(db, spec, names, space, budgets, spec.validation_size) if db.exists() else None

    # Before any work: a ratio range the decoder cannot take is refused here, the default one narrowed.
    fitted = (space.fit_decoder_ratio(decoder, "ratio" in spec.space.model_fields_set)
              if decoder is not None and lm and space.ratio != (0.0, 0.0) else None)
    executor = executor_for(ray, spec.parallel, progress)
    try:
        trial_data = _write_validation(run_dir, recipe, split) if split else None
        source = _measure_source(recipe, run_dir, targets, devices, executor, progress, trial_data)
        kind = source["source"]["kind"]
        if space.lm is not None:
            if fitted:
                progress.done(fitted)
            pruning = "pruning heads and MLP units, " if space.ratio != (0.0, 0.0) else ""
            progress.done(f"a decoder LM: the tune tries {pruning}distillation, weight bits, int4 block sizes and "
                          "cache lengths")
        elif kind not in registered()["structured_prune"].kinds - {"decoder"} and space.ratio != (0.0, 0.0):
            progress.done(f"the source is a {kind} model, which the tune's structured_prune space does not take: the "
                          "tune tries post-training exports only")
            space.ratio = (0.0, 0.0)
        elif kind == "torch" and any(space.guidance):  # layer sensitivity is measured on Keras models
            progress.done("the source is a PyTorch program: its layer sensitivity is not measured, so the tune "
                          "prunes it with one ratio for every layer (layer_guidance 0)")
            space.guidance = [0.0]
        if deadline is not None and deadline - time.monotonic() < source["duration_s"]:
            raise EdgepressError(
                f"The time budget ({spec.time_budget:.0f} s) is too small for one trial: measuring the source model "
                f"alone took {source['duration_s']:.0f} s, and a trial exports and measures as much and trains too. "
                f"Give --time-budget of at least {max(60, 4 * source['duration_s']):.0f}s; what was done is kept in "
                f"{run_dir}.")
        base = _base(recipe, source, trial_data)
        if space.ratio != (0.0, 0.0) and any(space.guidance):
            from edgepress.tune.sensitivity import load_or_measure

            space.sensitivity = load_or_measure(run_dir, source["model_path"], base["data"], progress)
        study = study or _open_study(db, spec, names, space, budgets, spec.validation_size)
        loop = _Loop(study, space, spec, names, targets, budgets, base, source, run_dir, executor, progress,
                     started, deadline)
        loop.run()
        if split:  # the picks were chosen on the validation split: what they score on the test split
            base = {**base, "data": split["test_data"]}
            tested = _test_picks(study, space, source, names, base, targets, run_dir, executor, progress)
        else:
            tested = {}
    finally:
        executor.close()
    results = summarize(study, space, budgets, source, names, loop.dropped, base, targets, run_dir,
                        time.monotonic() - started, tested, split and {k: split[k] for k in ("size", "train", "test")})
    return TuneResult(results, run_dir)


def _float_op_kinds(recipe) -> list[str]:
    """The kinds of ops of deploy.layers.FLOAT_OPS the recipe's model has layers of, asked the way a float_ops
    export asks (check_float_ops): none for a model that is not a Keras one. A zoo model is asked built untrained
    (training changes its weights, not its layers)."""
    from edgepress.deploy.layers import FLOAT_OPS, check_float_ops
    from edgepress.models import zoo
    from edgepress.models.loading import import_custom_objects, open_model
    from edgepress.models.source import wrap

    spec = recipe.model
    if spec.path is not None:
        import_custom_objects(spec.custom_objects, spec.path, spec.trusted)
        source = open_model(spec.path, trusted=spec.trusted)
    else:
        source = wrap(zoo.build(spec.zoo))
    kinds = []
    for kind in FLOAT_OPS:
        try:
            check_float_ops(source, [kind], "tune", "tflite", "int8")
        except EdgepressError:  # no such layer (or not a Keras model): nothing of this kind to keep float
            continue
        kinds.append(kind)
    return kinds


def _validation_split(recipe, size: int | None, lm: bool) -> dict | None:
    """With tune.validation_size: the recipe's data, loaded as a run loads it, and the data sections of the
    trials (its training split, the last `size` samples as their test split; written by _write_validation) and of
    the picks' test runs (the held-in training samples, the recipe's test split). Refused when it leaves no
    training data."""
    if size is None:
        return None
    from edgepress.models.datasets import load_dataset

    if lm:
        raise EdgepressError("tune.validation_size holds out samples to judge a classifier's accuracy on; a decoder "
                             "LM's tune is judged on perplexity over its test windows: remove validation_size.")
    spec = recipe.data
    data = load_dataset(spec.dataset, spec.path, spec.train_size, spec.test_size, spec.seed)
    train, test = len(data.x_train), len(data.x_test)
    if size >= train:
        raise EdgepressError(f"tune.validation_size {size} leaves no training data: the recipe's training split has "
                             f"{train} samples (data.train_size); give a validation_size below {train} (an eighth "
                             f"would be {max(1, train // 8)}), or more training data.")
    shared = spec.model_dump(mode="json", include={"calibration_samples", "check_samples", "seed"})
    return {"size": size, "train": train - size, "test": test, "x": data.x_train, "y": data.y_train,
            "trial_data": {"dataset": "npz", "train_size": train - size, "test_size": size, **shared},
            "test_data": {**spec.model_dump(mode="json", exclude_none=True), "train_size": train - size,
                          "test_size": test}}


def _write_validation(run_dir: Path, recipe, split: dict) -> dict:
    """validation.npz: the recipe's training split, whose last samples are the trials' test split; returns the
    trials' data section."""
    import numpy as np

    path = run_dir / "validation.npz"
    with files.atomic_path(path) as tmp:
        np.savez(tmp, x=split["x"], y=split["y"])
    return {**split["trial_data"], "path": str(path.resolve())}


def _decoder_of(recipe):
    """The recipe's model as a decoder LM's module (what its heads, units and positions are asked of), or None when
    it is not one: a file the decoder kind opens (`opens`: a model directory), or a zoo model the zoo saves as a
    decoder, built untrained (training changes its weights, not its shape). Other models are not loaded here."""
    from edgepress.compress.structured_prune import is_decoder
    from edgepress.models import zoo
    from edgepress.models.loading import open_model
    from edgepress.models.source import framework_model, kinds

    spec = recipe.model
    if spec.path is not None:
        if not kinds()["decoder"].opens(Path(spec.path)):
            return None
        model = framework_model(open_model(spec.path, trusted=spec.trusted))
    elif getattr(zoo.ZOO.get(spec.zoo), "saved_as", None) == "decoder":
        model = zoo.build(spec.zoo)
    else:
        return None
    return model if is_decoder(model) else None


# What a tune writes into its run directory: a folder holding any of these is a tune's (resumed or extended).
_TUNE_FILES = ("study.db", "tune.json", "source", "trials", "validation.npz")


def _check_tune_dir(run_dir: Path) -> None:
    """Refuse, before any work, a run directory that is a folder of the user's own files (as `edgepress run` does),
    and a source/ or trials/ that is not a real folder inside it (a symlink out would take the trials' files
    elsewhere)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise EdgepressError(f"The run directory {run_dir} is an existing file, not a folder. Give -o a folder path.")
    if not run_dir.is_dir():
        return
    for name in ("source", "trials"):
        files.real_dir_inside(run_dir, run_dir / name, "where the tune keeps its runs")
    if any((run_dir / name).exists() for name in _TUNE_FILES):
        return
    others = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise EdgepressError(f"The run directory {run_dir} already holds other files ({shown}) and no tune: give -o "
                             "a new or empty folder, or the folder of a tune to resume it.")


def _open_study(db: Path, spec: TuneSpec, names: list[str], space: Space, budgets: dict,
                validation_size: int | None = None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if space.lm is not None:  # perplexity down, decode tokens/s up on each device, bytes down
        directions = ["minimize", *["maximize"] * len(names), "minimize"]
    else:  # accuracy up, p50 down on each device, bytes down
        directions = ["maximize", *["minimize"] * len(names), "minimize"]
    existed = db.exists()
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(storage=f"sqlite:///{db}", study_name=STUDY_NAME, directions=directions,
                                    load_if_exists=True)
    except Exception as e:  # not SQLite, or SQLite without Optuna's tables, or a schema Optuna cannot read
        raise EdgepressError(f"The study file {db} cannot be read as an Optuna study ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}). It was left as it is: move it away to start a new "
                             "study in this directory, or give another -o.") from None
    if not existed or "devices" not in study.user_attrs:
        study.set_user_attr("devices", names)
        study.set_user_attr("space", space.to_dict())
        study.set_user_attr("budgets", budgets)
        study.set_user_attr("validation_size", validation_size)
    elif study.user_attrs["devices"] != names:
        raise EdgepressError(f"The study in {db.parent} was made for devices {', '.join(study.user_attrs['devices'])},"
                             f" not {', '.join(names)}: give the same devices to resume it, or another -o.")
    elif study.user_attrs["space"]["exports"] != space.exports:
        raise EdgepressError(f"The study in {db.parent} was made with other export choices "
                             f"({study.user_attrs['space']['exports']}); resume it with the same space, or give "
                             "another -o.")
    elif study.user_attrs.get("budgets") != budgets:
        raise EdgepressError(f"The study in {db.parent} was made with the budgets {study.user_attrs.get('budgets')}, "
                             f"not {budgets}: its trials were judged by those; resume it with the same budgets, or "
                             "give another -o.")
    elif study.user_attrs.get("validation_size") != validation_size:
        raise EdgepressError(f"The study in {db.parent} was made with tune.validation_size "
                             f"{study.user_attrs.get('validation_size')}, not {validation_size}: its trials were "
                             "scored on that split; resume it with the same one, or give another -o.")
    return study


def _measure_source(recipe, run_dir: Path, targets: dict, devices: list, executor, progress,
                    data: dict | None = None) -> dict:
    """The source model exported as float (each format a device runs) and measured on every device, once per
    run directory; for a zoo model this is where it is trained, and the trials start from the file it saved.
    `data`: the trials' data section (a validation split), else the recipe's."""
    saved = run_dir / "source" / "tune-source.json"
    if saved.exists():
        return json.loads(saved.read_text())
    formats = [f for f in ("tflite", "onnx") if any(d.runs(f) for d in devices)]
    base = recipe.model_dump(mode="json", exclude={"tune"})
    if data is not None:
        base["data"] = data
    plan = {**base, "name": "source", "steps": [], "exports": [{"format": f, "precision": "fp32"} for f in formats],
            "targets": list(targets.values())}
    progress.update("measuring the source model (float) on every device")
    result = _wait(executor, executor.submit(plan, str(run_dir / "source"), None, label="source"))
    if result["status"] != "complete":
        raise EdgepressError(f"Measuring the source model failed: {result['reason']}")
    failed = {d: v["error"] for d, v in result["devices"].items() if v["error"]}
    if failed:
        raise EdgepressError("Could not measure the source model on " + "; ".join(
            f"{d}: {why}" for d, why in failed.items()) + ". Check the device (`edgepress bench`) and start again.")
    src = result["models"][0]
    result["source"].update(accuracy=src["accuracy"], macs=src["macs"], perplexity=src.get("perplexity"))
    saved_as = (src.get("file") or {}).get("file") or "0-source.keras"  # a decoder is a directory
    result["model_path"] = recipe.model.path or str((run_dir / "source" / "models" / saved_as).resolve())
    files.write_text(saved, json.dumps(result, indent=1))
    said = f"perplexity {src['perplexity']:.3f}" if src.get("perplexity") else f"accuracy {src['accuracy']:.2%}"
    progress.done(f"source: {said}, {src['params']:,} parameters, "
                  + ", ".join(f"{r['name']} on {r['device']} p50 {ms(r['latency']['p50'])} ms"
                              for r in result["rows"]))
    return result


def _wait(executor, handle) -> dict:
    while True:
        for _, result in executor.wait([handle], timeout=5):
            return result


def _base(recipe, source: dict, data: dict | None = None) -> dict:
    """The recipe every trial shares: the source model file (a zoo model trained once), data (`data`: a validation
    split's), measure, gates."""
    base = recipe.model_dump(mode="json", exclude={"tune", "steps", "exports", "targets", "name"})
    if data is not None:
        base["data"] = data
    base["model"] = {"path": source["model_path"], **(
        {"input_shape": recipe.model.input_shape} if recipe.model.input_shape else {})}
    return base


class _Loop:
    """Ask Optuna for trials, run them (a few at once with Ray), tell it what they measured."""

    def __init__(self, study, space, spec, names, targets, budgets, base, source, run_dir, executor, progress,
                 started, deadline) -> None:
        self.study, self.space, self.spec, self.names, self.targets = study, space, spec, names, targets
        self.budgets, self.base, self.source, self.run_dir = budgets, base, source, run_dir
        self.executor, self.progress, self.started, self.deadline = executor, progress, started, deadline
        self.dropped: dict[str, str] = {}
        self.stopped: dict[str, dict[str, str]] = {}  # device -> export choices no longer made, and why
        self.startup = startup_trials(spec.trials)
        self.durations: list[float] = []  # of the trials this invocation ran (not cached ones)
        self.study.sampler = _sampler(spec, len(study.trials), self.startup)

    def run(self) -> None:
        self._requeue_interrupted()
        done = self._finished()
        pending: list[tuple] = []  # (handle, trial, params, key)
        if done >= self.spec.trials:
            self.progress.done(f"the study already has {done} finished trials (--trials {self.spec.trials}); "
                               "raise --trials to extend it")
        while True:
            while (len(pending) < self.executor.parallel and done + len(pending) < self.spec.trials
                   and not self._out_of_time() and len(self.dropped) < len(self.names)):
                trial = self.study.ask()
                params = self.space.suggest(trial)
                live = [n for n in self.names if n not in self.dropped]
                name = _trial_name(trial.number)
                exports = (self.space.lm_exports(params, live) if self.space.lm is not None
                           else exports_for(self._export_choices(), self.space.aware_drop, live, self.space.float_ops))
                recipe = recipe_for(self.base, name, self.space.steps(params), exports, [self.targets[n] for n in live],
                                    params)
                key = key_of(recipe)
                trial.set_user_attr("params", params)
                trial.set_user_attr("key", key)
                cached = self._cached(key)
                if cached is not None:
                    self._finish(trial, params, {**cached.user_attrs["result"], "cached_from": cached.number})
                    done += 1
                    continue
                self.progress.update(f"{self._status(done)}: trial {trial.number} {_describe(params)}")
                handle = self.executor.submit(recipe, str(self.run_dir / "trials" / name), self._floor(params),
                                              label=f"trial {trial.number}")
                pending.append((handle, trial, params, key))
            if not pending:
                break
            finished = self.executor.wait([p[0] for p in pending], timeout=5)
            for handle, result in finished:
                entry = next(p for p in pending if p[0] is handle)
                pending.remove(entry)
                self._finish(entry[1], entry[2], result)
                done += 1
                self._pace(done, result)
        if self._out_of_time() and done < self.spec.trials:
            of = f" of {self.spec.trials}" if self.spec.trials < MAX_TRIALS else ""
            self.progress.done(f"time budget reached after {done}{of} trials; run the same command again to go on")

    def _export_choices(self) -> dict[str, list[str]]:
        """Each device's export choices, less those that lost to fp32 in every trial so far (`losing_exports`)."""
        losing = losing_exports([r for _, r in _completed_rows(self.study)], self.names)
        for device, choices in losing.items():
            for choice, why in choices.items():
                if choice not in self.stopped.setdefault(device, {}):
                    self.stopped[device][choice] = why
                    self.progress.done(f"{device}: {choice.replace(':', ' ')} is no longer exported: {why} (the "
                                       "trials' reports say per op where its time goes)")
        return {d: [c for c in cs if c not in self.stopped.get(d, {})] for d, cs in self.space.exports.items()}

    def _pace(self, done: int, result: dict) -> None:
        """Shorten TPE's random start to the trials that fit in the time left, once trials have been timed."""
        if result.get("duration_s") is not None:
            self.durations.append(result["duration_s"])
        if self.deadline is None or self.spec.sampler != "tpe" or not self.durations:
            return
        left = max(0.0, self.deadline - time.monotonic()) * self.executor.parallel  # trial-seconds, on every worker
        startup = startup_trials(self.spec.trials, done, left, self.durations)
        if startup < self.startup:
            self.startup = startup
            self.study.sampler = _sampler(self.spec, len(self.study.trials), startup)
            pace = sum(self.durations) / len(self.durations)
            self.progress.done(f"random start shortened to {startup} trials: at {pace:.0f} s a trial, about "
                               f"{expected_trials(self.spec.trials, done, left, self.durations)} trials fit in "
                               "the time budget")

    def _status(self, done: int) -> str:
        # Under a time budget without a trial count, the budget is the limit: no "/10000".
        text = f"trial {done}/{self.spec.trials} done" if self.spec.trials < MAX_TRIALS else f"trial {done} done"
        if self.deadline is not None:
            text += f", {max(0, self.deadline - time.monotonic()) / 60:.1f} min left"
        return text

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _finished(self) -> int:
        from optuna.trial import TrialState

        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=finished)
                   if not t.user_attrs.get("interrupted"))

    def _requeue_interrupted(self) -> None:
        """A trial left running by a killed tune: mark it interrupted (failed, not counted) and ask for it again."""
        import optuna
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Trial(study, id) is Optuna's handle for a trial of a study; FrozenTrial keeps the id as _trial_id.
            optuna.trial.Trial(self.study, t._trial_id).set_user_attr("interrupted", True)
            self.study.tell(t.number, state=TrialState.FAIL)
            # Its half-done folder (models, artifacts, their temporaries) is no trial's result: the asked-again
            # trial gets its own.
            files.remove_inside(self.run_dir, self.run_dir / "trials" / _trial_name(t.number))
            if t.params:
                self.study.enqueue_trial(t.params, skip_if_exists=False)
            self.progress.done(f"trial {t.number} was interrupted by a stopped tune: asked again")

    def _cached(self, key: str):
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("key") == key and "result" in t.user_attrs and "cached_from" not in t.user_attrs[
                    "result"]:
                return t
        return None

    def _floor(self, params: dict) -> float | None:
        """The accuracy below which a trial is hopeless after its first fine-tune epoch (then it stops there,
        before the rest of its training and its exports are spent on it)."""
        drop, margin = self.budgets.get("max_accuracy_drop"), self.space.hopeless_margin
        if drop is None or margin is None or not self.space.steps(params):
            return None
        return self.source["source"]["accuracy"] - drop - margin

    def _finish(self, trial, params: dict, result: dict) -> None:
        from optuna.trial import TrialState

        for device, state in (result.get("devices") or {}).items():
            if state["error"] and device not in self.dropped:
                self.dropped[device] = state["error"]
                self.progress.done(f"device {device} dropped: {state['error']}; its trials are marked, the others "
                                   "go on")
        trial.set_user_attr("result", result)
        status = result["status"]
        if status == "complete" and not result["rows"]:
            status, result["reason"] = "failed", "no artifact was measured on any device"
            trial.set_user_attr("result", {**result, "status": status})
        if status == "complete":
            values, constraints = self._objectives(params, result)
            _constrain(trial, constraints)
            self.study.tell(trial, values)
        elif status in ("pruned", "refused"):
            # Hopeless or refused: the sampler learns to keep away (a failed trial teaches it nothing, so it asked
            # for the same refused ratio again and again).
            _constrain(trial, {name: 1.0 for name in self._constraint_names()})
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        _write(self)
        self.progress.done(f"trial {trial.number} {_describe(params)}: {status}"
                           + (f" ({result['reason']})" if result.get("reason") else "")
                           + (f" (same as trial {result['cached_from']})" if "cached_from" in result else "")
                           + f"; {self._status(self._finished())}; best so far: {self._best_so_far()}")

    def _constraint_names(self) -> list[str]:
        b = self.budgets
        if self.space.lm is not None:
            return ([g for g in ("max_perplexity", "max_bytes") if b[g] is not None]
                    + ([f"min_decode_tokens_per_s@{n}" for n in self.names]
                       if b["min_decode_tokens_per_s"] is not None else []))
        return ((["max_accuracy_drop"] if b["max_accuracy_drop"] is not None else [])
                + ([f"max_p50_ms@{n}" for n in self.names] if b["max_p50_ms"] is not None else [])
                + (["max_bytes"] if b["max_bytes"] is not None else []))

    def _objectives(self, params: dict, result: dict) -> tuple[list[float], dict[str, float]]:
        """accuracy (the least accurate chosen artifact), p50 of each device's chosen artifact, bytes (the
        largest chosen artifact); constraints: how far over each budget, relative to it (<= 0 within). A device's
        chosen artifact is the trial's best on it (`trial_pick`)."""
        chosen = {d: trial_pick(result["rows"], d, self.budgets) for d in self.names}
        if self.space.lm is not None:
            return _lm_objectives(chosen, result, self.budgets, self.names)
        accuracies = [r["metrics"]["accuracy"] for r in chosen.values() if r and r["metrics"]["accuracy"] is not None]
        accuracy = min(accuracies) if accuracies else result["models"][-1]["accuracy"]
        p50 = [r["latency"]["p50"] if r and r["latency"]["p50"] is not None else PENALTY for r in chosen.values()]
        size = max((r["bytes"] for r in chosen.values() if r), default=PENALTY)
        b, constraints = self.budgets, {}
        # One scale for every budget (verdict.over_budget): an absolute accuracy miss (0.033 for 3.3 pt) beside
        # relative size misses (0.1 for 10%) made TPE prefer 4-epoch trials 3 pt short over 8-epoch ones 10% large.
        if b["max_accuracy_drop"] is not None:
            drop = self.source["source"]["accuracy"] - accuracy
            constraints["max_accuracy_drop"] = verdict.over_budget("max_accuracy_drop", drop, b["max_accuracy_drop"])
        if b["max_p50_ms"] is not None:
            constraints.update({f"max_p50_ms@{n}": verdict.over_budget("max_p50_ms", v, b["max_p50_ms"])
                                for n, v in zip(self.names, p50, strict=True)})
        if b["max_bytes"] is not None:
            constraints["max_bytes"] = verdict.over_budget("max_bytes", size, b["max_bytes"])
        return [accuracy, *p50, float(size)], constraints

    def _best_so_far(self) -> str:
        best = _best_points(self.study, self.source, self.names)
        return "; ".join(f"{d} {p['artifact']} {ms(p['p50_ms'])} ms {percent(p['accuracy'])} "
                         f"{p['bytes']:,} B" if p else f"{d} none within the budgets" for d, p in best.items())


def _lm_objectives(chosen: dict, result: dict, budgets: dict, names: list[str]) -> tuple[list[float], dict]:
    """A decoder LM trial's objectives: perplexity (the worst chosen artifact's; lower is better), decode tokens/s
    of each device's chosen artifact (higher is better; 0 where nothing was measured), bytes (the largest chosen);
    constraints: how far over each budget, relative to it (<= 0 within)."""
    points = {d: out.point_of(r, None) if r else None for d, r in chosen.items()}
    perplexities = [p["perplexity"] for p in points.values() if p and p["perplexity"] is not None]
    perplexity = max(perplexities) if perplexities else PENALTY
    speed = [p["decode_tokens_per_s"] if p and p["decode_tokens_per_s"] is not None else 0.0 for p in points.values()]
    size = max((p["bytes"] for p in points.values() if p), default=PENALTY)
    constraints = {}
    if budgets["max_perplexity"] is not None:
        constraints["max_perplexity"] = verdict.over_budget("max_perplexity", perplexity, budgets["max_perplexity"])
    if budgets["min_decode_tokens_per_s"] is not None:
        constraints.update({f"min_decode_tokens_per_s@{n}": verdict.over_budget(
            "min_decode_tokens_per_s", v, budgets["min_decode_tokens_per_s"]) for n, v in zip(names, speed,
                                                                                               strict=True)})
    if budgets["max_bytes"] is not None:
        constraints["max_bytes"] = verdict.over_budget("max_bytes", size, budgets["max_bytes"])
    return [float(perplexity), *map(float, speed), float(size)], constraints


def _trial_name(number: int) -> str:
    """A trial's folder under trials/."""
    return f"t{number:03d}"


def _constrain(trial, constraints: dict[str, float]) -> None:
    """The budgets as Optuna constraints (feasible when every value is <= 0): the samplers prefer feasible trials."""
    for name, value in constraints.items():
        trial.set_constraint(name, float(value))


def expected_trials(trials: int, done: int = 0, time_left: float | None = None,
                    durations: list[float] | None = None) -> int:
    """The trials the tune will run: `trials`, or under a time budget the ones that fit in the time left at the
    pace measured so far (`durations`), when fewer."""
    if time_left is None or not durations:
        return trials
    return min(trials, int(done + time_left / (sum(durations) / len(durations))))


def startup_trials(trials: int, done: int = 0, time_left: float | None = None,
                   durations: list[float] | None = None) -> int:
    """TPE's random start: a third of the trials the tune will run (expected_trials), 2 to 10. With --trials 200,
    a 25-minute MobileNetV2 tune (4-minute trials) was all random start and never reached the guided search."""
    return max(2, min(10, expected_trials(trials, done, time_left, durations) // 3))


def _sampler(spec: TuneSpec, n_trials: int, startup: int):
    import optuna

    seed = spec.seed + n_trials  # a resumed tune does not replay the random start of the first one
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(20, spec.trials // 3)), seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed)


def _describe(params: dict) -> str:
    if "weight_bits" in params:  # a decoder LM's trial
        block = params.get("block_size")
        pruned = ([f"ratio {params['ratio']:g}, {params['fine_tune_epochs']} epochs"
                   + (f", round to {params['round_to']}" if params.get("round_to", 1) != 1 else "")]
                  if params.get("ratio") else [])
        return ", ".join([*pruned, ("distilled" if params.get("distill") else "no distillation"),
                          f"int{params['weight_bits']} weights" + (f" in blocks of {block}" if block else ""),
                          f"cache {params['cache_len']}"])
    parts = [f"ratio {params['ratio']:g}"] if params.get("ratio") else ["no pruning"]
    if params.get("ratio"):
        parts.append(f"{params['fine_tune_epochs']} epochs" + (" + distill" if params.get("distill") else ""))
        if params.get("round_to", 1) != 1:
            parts.append(f"round to {params['round_to']}")
        if params.get("layer_guidance"):
            parts.append(f"per-layer guidance {params['layer_guidance']:g}")
    return ", ".join(parts)


def trial_pick(rows: list[dict], device: str, budgets: dict) -> dict | None:
    """A trial's artifact for `device`, the one its objectives and tune.json's `chosen` stand for: the run's own
    recommendation among its rows (verdict.choose_best: the fastest that met every gate, ties to the smaller), else
    the closest to the budgets; None when nothing was measured there. (Accuracy-aware int8's intermediate
    artifacts, role "tried", are not candidates.)"""

    mine = [r for r in rows if r["device"] == device and (r.get("accuracy_aware") or {}).get("role") != "tried"]
    if not mine:
        return None
    best = verdict.choose_best(mine).get(device)
    if best is not None:
        return next(r for r in mine if r["name"] == best)
    pick = verdict.closest([out.point_of(r, None) for r in mine], budgets)
    return next(r for r in mine if r["name"] == pick["artifact"])


# -- what the study holds, as tune.json, report.html and best-<device>.yaml -----------------------------------------

def _completed_rows(study) -> list[tuple[object, list[dict]]]:
    """(trial, its rows) of every trial that ran to the end (not a cached repeat)."""
    from optuna.trial import TrialState

    return [(t, t.user_attrs["result"]["rows"]) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "rows" in t.user_attrs.get("result", {}) and "cached_from" not in t.user_attrs["result"]]


def _trial_rows(study) -> list[tuple[object, dict]]:
    """(trial, raw row) for every artifact measured by a trial (not counting a cached repeat twice)."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        result = t.user_attrs.get("result", {})
        if "cached_from" in result:
            continue
        rows += [(t, r) for r in result.get("rows", []) if (r.get("accuracy_aware") or {}).get("role") != "tried"]
    return rows


def _best_points(study, source: dict, names: list[str]) -> dict[str, dict | None]:

    raw = [(None, r) for r in source["rows"]] + _trial_rows(study)
    best = verdict.choose_best([r for _, r in raw])
    by_name = {(r["device"], r["name"]): (t, r) for t, r in raw}
    points = {}
    for device in names:
        found = by_name.get((device, best.get(device)))
        points[device] = None if found is None else out.point_of(found[1], None if found[0] is None else
                                                                 found[0].number)
    return points


def summarize(study, space: Space, budgets: dict, source: dict, names: list[str], dropped: dict, base: dict,
              targets: dict, run_dir: Path, duration_s: float, tested: dict | None = None,
              validation: dict | None = None) -> dict:
    """Write tune.json, report.html and best-<device>.yaml from the study, and return tune.json's content.
    `tested`: per device, its pick's accuracy on the test split (`_test_picks`), when the trials were scored on a
    `validation` split ({size, train, test})."""
    results = _tune_json(study, space, budgets, source, names, dropped, duration_s)
    if validation:
        results["validation"] = validation
    for device, point in results["best"].items():
        if point is None:
            continue
        if validation:
            point.update((tested or {}).get(device) or {"test_accuracy": None})
        path = run_dir / f"best-{device}.yaml"
        files.write_text(path, _best_recipe(study, point, space, base, targets[device], device))
        point["recipe"] = str(path)
    files.write_text(run_dir / "tune.json", json.dumps(results, indent=1) + "\n")
    out.write_report(run_dir / "report.html", results)
    return results


def _write(loop: _Loop) -> None:
    """tune.json after each trial, so a long tune can be followed and a killed one shows what it had."""
    results = _tune_json(loop.study, loop.space, loop.budgets, loop.source, loop.names, loop.dropped,
                         time.monotonic() - loop.started)
    files.write_text(loop.run_dir / "tune.json", json.dumps(results, indent=1) + "\n")


def _tune_json(study, space, budgets, source, names, dropped, duration_s) -> dict:
    trials = []
    for t in study.get_trials(deepcopy=False):
        result = t.user_attrs.get("result", {})
        status = ("interrupted" if t.user_attrs.get("interrupted") else "running" if not result
                  else "cached" if "cached_from" in result else result["status"])
        trials.append({
            "number": t.number, "status": status, "reason": result.get("reason"), "params": t.user_attrs.get(
                "params", t.params), "key": t.user_attrs.get("key"), "cached_from": result.get("cached_from"),
            "duration_s": result.get("duration_s"), "run_dir": result.get("run_dir"), "worker": result.get("worker"),
            "first_epoch_accuracy": result.get("first_epoch_accuracy"), "models": result.get("models", []),
            "devices": {d: v["error"] for d, v in (result.get("devices") or {}).items()},
            "rows": [out.point_of(r, t.number) for r in result.get("rows", [])] if status == "complete" else [],
            **_chosen(t, result, names, budgets),
        })
    lm = space.lm is not None
    source_points = [out.point_of(r, None) for r in source["rows"]]
    all_points = source_points + [out.point_of(r, t.number) for t, r in _trial_rows(study)]
    best = _best_points(study, source, names)
    closest = {}
    for device in names:
        if best[device] is None:
            mine = [p for p in all_points if p["device"] == device]
            if mine:
                pick = verdict.closest(mine, budgets)
                closest[device] = {**pick, "misses": verdict.misses(pick, budgets)}
    src = source["source"]
    return {
        "schema_version": 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 1),
        "objectives": (["perplexity (min)", *[f"decode tokens/s on {n} (max)" for n in names], "bytes (min)"] if lm
                       else ["accuracy (max)", *[f"p50 ms on {n} (min)" for n in names], "bytes (min)"]),
        "budgets": budgets,
        "space": space.to_dict(),
        "source": {"model": src["model"], "accuracy": src["accuracy"], "params": src["params"], "macs": src["macs"],
                   **({"perplexity": src.get("perplexity")} if lm else {}), "rows": source_points},
        "trials": trials,
        "pareto": {d: out.pareto_front([p for p in all_points if p["device"] == d], *(
            (("decode_tokens_per_s",), ("perplexity", "bytes")) if lm else ())) for d in names},
        "best": best,
        "closest": closest,
        "dropped": dropped,
        # Exports no longer made for a device: slower than that format's fp32 in every trial that measured them.
        "stopped_exports": losing_exports([rows for _, rows in _completed_rows(study)], names),
        "passed": all(best[d] is not None for d in names) and not dropped,
    }


def _chosen(trial, result: dict, names: list[str], budgets: dict) -> dict:
    """A trial's headline numbers: its final model's params, MACs and accuracy, and per device its pick's
    (`trial_pick`) artifact, accuracy, p50 and bytes."""
    model = (result.get("models") or [{}])[-1]
    chosen = {}
    for device in names:
        row = trial_pick(result.get("rows", []), device, budgets)
        point = None if row is None else out.point_of(row, trial.number)
        chosen[device] = None if point is None else {k: point[k] for k in (
            "artifact", "accuracy", "p50_ms", "bytes", "perplexity", "decode_tokens_per_s") if k in point}
    return {"params_count": model.get("params"), "macs": model.get("macs"), "model_accuracy": model.get("accuracy"),
            "chosen": chosen}


def _pick(study, point: dict, space: Space, device: str) -> tuple[dict | None, list[dict], dict, dict | None]:
    """The trial params, steps, export and report row (None for the source's own file) of a device's pick."""
    if point["trial"] is None:
        return None, [], {"format": point["format"], "precision": "fp32"}, None
    trial = study.trials[point["trial"]]
    params = trial.user_attrs["params"]
    row = next(r for r in trial.user_attrs["result"]["rows"] if r["name"] == point["artifact"]
               and r["device"] == device)
    export = export_of_row(row, space.aware_drop)
    if space.lm is not None:  # its weight bits and block size
        export = next(e for e in space.lm_exports(params) if e["format"] == row["format"])
    return params, space.steps(params), export, row


def _test_picks(study, space: Space, source: dict, names: list[str], base: dict, targets: dict, run_dir: Path,
                executor, progress) -> dict[str, dict]:
    """Per device, its pick (chosen on the validation split) exported again from its trial's final model (or the
    source) and measured once on the test split (`base` holds that data section): {test_accuracy, test_run}."""
    tested = {}
    for device, point in _best_points(study, source, names).items():
        if point is None:
            continue
        _, _, export, _ = _pick(study, point, space, device)
        if point["trial"] is None:
            model = source["model_path"]
        else:
            result = study.trials[point["trial"]].user_attrs["result"]
            saved = (result["models"][-1].get("file") or {}).get("file")
            if saved is None:
                tested[device] = {"test_accuracy": None, "test_error": "the trial's final model was not saved"}
                continue
            model = str(Path(result["run_dir"]) / "models" / saved)
        folder = run_dir / "test" / device
        files.remove_inside(run_dir, folder)  # a resumed tune's pick may be another
        recipe = recipe_for({**base, "model": {**base["model"], "path": model},
                             "measure": {**base.get("measure", {}), "runs": 3, "warmup": 1, "target_ci_width": None}},
                            f"test-{device}", [], [export], [targets[device]])
        progress.update(f"measuring {device}'s pick {point['artifact']} on the test split")
        result = _wait(executor, executor.submit(recipe, str(folder), None, label=f"test {device}"))
        row = next((r for r in result.get("rows", []) if r["device"] == device), None)
        if row is None:
            tested[device] = {"test_accuracy": None, "test_error": result.get("reason") or "nothing measured"}
            continue
        tested[device] = {"test_accuracy": row["metrics"]["accuracy"], "test_run": str(folder)}
        progress.done(f"{device}'s pick {point['artifact']}: {percent(point['accuracy'])} on the validation split, "
                      f"{percent(row['metrics']['accuracy'])} on the test split")
    return tested


def _best_recipe(study, point: dict, space: Space, base: dict, target: dict, device: str) -> str:
    """best-<device>.yaml: the steps of the trial that made the artifact and the one export that makes it."""
    import yaml

    params, steps, export, row = _pick(study, point, space, device)
    recipe = recipe_for(base, f"best-{device}", steps, [export], [target], params if row else None)
    header = (f"# Made by `edgepress tune`: trial {point['trial']}'s artifact {point['artifact']} on {device} "
              f"(accuracy {percent(point['accuracy'])}, p50 {ms(point['p50_ms'])} ms, {point['bytes']:,} "
              "bytes).\n# `edgepress run` on this file makes it again.\n")
    return header + yaml.safe_dump(recipe, sort_keys=False)
