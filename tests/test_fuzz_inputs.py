"""Hostile and careless input, round two (issue 28, part B): recipes, names that become paths, the run directory's
own structure, results files given to `compare` and `--baseline`, and command-line values.

Every case is refused with exit code 2 and a message naming the fault, no traceback, nothing written outside the run
directory (nor, for a refusal, inside it), and no connection to a host the user did not name. The cases are new
(tests/test_fuzz.py has the first corpus); each builds its input in a temporary folder.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app

runner = CliRunner()

BASE = {
    "name": "hostile",
    "model": {"zoo": "seed_mlp", "train_epochs": 1},
    "data": {"dataset": "digits", "train_size": 200, "test_size": 50, "calibration_samples": 20},
    "exports": [{"format": "tflite", "precision": "fp32"}],
    "measure": {"runs": 2, "warmup": 0, "profile": False},
}
BASE_YAML = yaml.safe_dump(BASE, sort_keys=False)


def _message(output: str) -> str:
    """The output as one line: the assertions do not depend on where a terminal would wrap it."""
    return " ".join(output.split())


def _refused(result, pattern: str, code: int = 2) -> str:
    message = _message(result.output)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in message, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert re.search(pattern, message), message
    return message


def _with(**changes) -> dict:
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = raw
        for part in parents:
            node = node.setdefault(part, {}) if not part.isdigit() else node[int(part)]
        node[key] = value
    return raw


# -- recipes: (YAML text or a recipe dict, pattern the message must match) --------------------------------------

RECIPES: dict[str, tuple[str | dict | Callable[[Path], str], str]] = {
    "duplicate top-level key": (BASE_YAML + "steps: [{type: prune, target_sparsity: 0.5}]\nsteps: []\n",
                                r"key 'steps' is given twice, at lines 1[0-9] and 1[0-9]"),
    "duplicate nested key": (BASE_YAML.replace("  train_size: 200\n", "  train_size: 200\n  train_size: 100\n"),
                             r"key 'train_size' is given twice, at lines \d+ and \d+"),
    "duplicate key in a flow mapping": (BASE_YAML + "gates: {max_bytes: 10, max_bytes: 20}\n",
                                        r"key 'max_bytes' is given twice"),
    "bad int tag": (BASE_YAML.replace("train_epochs: 1", "train_epochs: !!int abc"),
                    r"'abc' cannot be read as int.*line \d+"),
    "bad float tag": (BASE_YAML + "gates: {max_p50_ms: !!float fast}\n", r"'fast' cannot be read as float"),
    "impossible date": (BASE_YAML.replace("name: hostile", "name: 2026-13-01"),
                        r"'2026-13-01' cannot be read as timestamp \(month must be in 1..12\)"),
    "5,000-digit integer": (BASE_YAML.replace("train_epochs: 1", "train_epochs: " + "7" * 5000),
                            r"\(5,000 characters\) cannot be read as int \(more digits than any setting takes\)"),
    "python tag": (BASE_YAML + "gates: !!python/object/apply:os.system ['touch pwned']\n",
                   r"could not determine a constructor"),
    "boolean epochs": (_with(model__train_epochs=True), r"model: train_epochs: must be a number, not true/false"),
    "boolean runs": (_with(measure__runs=False), r"measure: runs: must be a number, not true/false"),
    "boolean in a shape": (_with(model__input_shape=[True, 64]), r"must be a number, not true/false"),
    "boolean byte budget": (_with(gates={"max_bytes": True}), r"gates: max_bytes: must be a number, not true/false"),
    "learning rate 1e300": (_with(model__learning_rate=1e300), r"model\.learning_rate: .*less than or equal to 10"),
    "learning rate .inf": (BASE_YAML.replace("train_epochs: 1", "train_epochs: 1\n  learning_rate: .inf"),
                           r"model\.learning_rate: Input should be a finite number"),
    "learning rate 1e999": (BASE_YAML.replace("train_epochs: 1", "train_epochs: 1\n  learning_rate: 1e999"),
                            r"model\.learning_rate: Input should be a finite number"),
    "step learning rate .nan": (BASE_YAML + "steps: [{type: prune, target_sparsity: 0.5, learning_rate: .nan}]\n",
                                r"steps\.0\.prune\.learning_rate: Input should be a finite number"),
    "p50 gate .inf": (BASE_YAML + "gates: {max_p50_ms: .inf}\n", r"gates\.max_p50_ms: Input should be a finite"),
    "measure seconds .nan": (BASE_YAML.replace("profile: false", "profile: false\n  max_seconds: .nan"),
                             r"measure\.max_seconds: Input should be a finite"),
    "zero dimension": (_with(model__input_shape=[0, 64]), r"model\.input_shape\.0: .*greater than or equal to 1"),
    "negative dimension": (_with(model__input_shape=[8, -8]), r"model\.input_shape\.1: .*greater than or equal to 1"),
    "billion batch export": (_with(exports=[{"format": "tflite", "precision": "fp32", "batch_size": 10**9}]),
                             r"exports\.0\.batch_size: .*less than or equal to 65536"),
    "runs past the bound": (_with(measure__runs=10**20), r"measure\.runs: .*less than or equal to 100000"),
    "threads past the bound": (_with(measure__threads=10**6), r"measure\.threads: .*less than or equal to 1024"),
    "digits with a path": (_with(data__path="/etc/passwd"), r"dataset digits .* reads no file.*remove path"),
    "NUL in the model path": (_with(model={"path": "model\0.keras"}),
                              r"model: path: a text value cannot contain a NUL byte"),
    "NUL in a student path": (_with(steps=[{"type": "distill", "student": {"path": "s\0.keras"}}]), r"NUL"),
    "NUL in a target name": (_with(targets=["x86-host\0"]), r"NUL"),
    "label that climbs out": (_with(targets=[{"name": "x86-host", "label": "x/../../../pwned"}]),
                              r"targets\.0\.label: 'x/\.\./\.\./\.\./pwned' is not a plain name"),
    "label dot-dot": (_with(targets=[{"name": "x86-host", "label": ".."}]), r"'\.\.' is not a plain name"),
    "label with a backslash": (_with(targets=[{"name": "x86-host", "label": "a\\b"}]), r"is not a plain name"),
    "tune guidance nan": (_with(tune={"space": {"layer_guidance": ["nan"]}}),
                          r"tune\.space\.layer_guidance\.0: Input should be a finite number"),
    "tune guidance out of range": (_with(tune={"space": {"layer_guidance": [2.0]}}), r"between 0 and 1"),
    "tune round_to zero": (_with(tune={"space": {"round_to": [0]}}), r"every round_to choice must be at least 1"),
    "tune trials boolean": (_with(tune={"trials": True}), r"tune: trials: must be a number, not true/false"),
    "tune budget .inf": (BASE_YAML + "tune: {time_budget: .inf}\n", r"tune\.time_budget: Input should be a finite"),
    "baseline limit negative": (_with(gates={"baseline": {"path": "r.json", "max_p50_regression": "-5%"}}),
                                r"max_p50_regression must be 0 or more"),
    "baseline limit nan": (_with(gates={"baseline": {"path": "r.json", "max_bytes_regression": float("nan")}}),
                           r"max_bytes_regression must be 0 or more"),
    "ssh python with an open quote": (_with(targets=[{"name": "rpi4", "reach": {"host": "10.0.0.5",
                                                                                 "python": 'python3 "'}}]),
                                      r"reach\.python: .*not a command line \(No closing quotation\)"),
}


def _profile(tmp: Path, **fields) -> str:
    profile = {"name": "board", "architecture": "x86_64", "runtimes": ["ai_edge_litert"],
               "precisions": [{"format": "tflite", "precision": "fp32"}], **fields}
    (tmp / "board.yaml").write_text(yaml.safe_dump(profile))
    return str(tmp / "board.yaml")


def _profile_target(tmp: Path, **fields) -> str:
    return yaml.safe_dump(_with(targets=[_profile(tmp, **fields)]))


def _profile_twice_keyed(tmp: Path) -> str:
    path = Path(_profile(tmp))
    path.write_text(path.read_text() + "threads: 2\nthreads: 4\n")
    return yaml.safe_dump(_with(targets=[str(path)]))


RECIPES["device name that is a path"] = (lambda tmp: _profile_target(tmp, name="../../pwned"),
                                         r"name: '\.\./\.\./pwned' is not a plain name")
RECIPES["device profile with a duplicate key"] = (_profile_twice_keyed, r"key 'threads' is given twice")
RECIPES["device threads boolean"] = (lambda tmp: _profile_target(tmp, threads=True),
                                     r"threads: must be a number, not true/false")


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_hostile_recipe_is_refused_before_anything_is_written(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative "pwned" would land here
    given, pattern = RECIPES[name]
    text = given(tmp_path) if callable(given) else given if isinstance(given, str) else yaml.safe_dump(given)
    (tmp_path / "recipe.yaml").write_text(text)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-o", str(out)])
    _refused(result, pattern)
    assert not out.exists()
    assert not list(tmp_path.rglob("pwned*")) and not list(tmp_path.parent.rglob("pwned*"))


def test_a_date_that_exists_is_still_not_a_name(tmp_path):
    (tmp_path / "recipe.yaml").write_text(BASE_YAML.replace("name: hostile", "name: 2026-01-01"))
    _refused(runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "run")]),
             r"name: Input should be a valid string")


# -- the run directory's own structure ----------------------------------------------------------------------------

def _earlier_run(folder: Path) -> None:
    folder.mkdir()
    (folder / ".edgepress-run").write_text("{}\n")
    (folder / "results.json").write_text("{}\n")


def test_previous_as_a_file_is_refused_and_nothing_moves(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    (out / "previous").write_text("not a folder")
    (tmp_path / "recipe.yaml").write_text(BASE_YAML)
    _refused(runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-o", str(out)]),
             r"previous \(where an earlier run is moved\) is a file, not a folder")
    assert sorted(p.name for p in out.iterdir()) == [".edgepress-run", "previous", "results.json"]


def test_previous_as_a_symlink_out_of_the_run_directory_is_refused(tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    _earlier_run(out)
    elsewhere.mkdir()
    (out / "previous").symlink_to(elsewhere)
    (tmp_path / "recipe.yaml").write_text(BASE_YAML)
    _refused(runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-o", str(out)]),
             r"previous \(where an earlier run is moved\) is a symbolic link, not a folder")
    assert not list(elsewhere.iterdir()) and (out / "results.json").is_file()


def test_tune_into_a_folder_of_the_users_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("my own file")
    (tmp_path / "recipe.yaml").write_text(BASE_YAML.replace("exports:\n- format: tflite\n  precision: fp32\n", ""))
    _refused(runner.invoke(app, ["tune", str(tmp_path / "recipe.yaml"), "-o", str(out)]),
             r"already holds other files \(thesis\.tex\) and no tune")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_tune_trials_as_a_symlink_out_is_refused(tmp_path):
    out, elsewhere = tmp_path / "tune", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "trials").symlink_to(elsewhere)
    (tmp_path / "recipe.yaml").write_text(BASE_YAML.replace("exports:\n- format: tflite\n  precision: fp32\n", ""))
    _refused(runner.invoke(app, ["tune", str(tmp_path / "recipe.yaml"), "-o", str(out)]),
             r"trials \(where the tune keeps its runs\) is a symbolic link")
    assert not list(elsewhere.iterdir())


# -- command-line values ---------------------------------------------------------------------------------------------

def test_bench_runs_past_the_bound_is_refused_at_once(tmp_path):
    (tmp_path / "m.tflite").write_bytes(b"\0" * 64)
    started = time.monotonic()
    result = runner.invoke(app, ["bench", str(tmp_path / "m.tflite"), "--runs", "99999999999999999999999"])
    assert time.monotonic() - started < 10
    _refused(result, r"Invalid value for '--runs': Input should be less than or equal to 100000")


@pytest.mark.parametrize("where, pattern", [("folder", r"--json .* is a folder; give a file path"),
                                            ("proc", r"--json /proc/.* is under /proc"),
                                            ("nul", r"null byte|NUL")])
def test_bench_json_to_a_folder_or_proc_is_refused_before_measuring(tmp_path, where, pattern):
    (tmp_path / "m.tflite").write_bytes(b"\0" * 64)  # never read: the option is checked first
    target = {"folder": str(tmp_path), "proc": "/proc/self/edgepress.json", "nul": "out\0.json"}[where]
    _refused(runner.invoke(app, ["bench", str(tmp_path / "m.tflite"), "--json", target]), pattern)


def test_run_junit_to_a_folder_is_refused_before_the_run(tmp_path):
    (tmp_path / "recipe.yaml").write_text(BASE_YAML)
    _refused(runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "run"), "--junit",
                                 str(tmp_path)]), r"--junit .* is a folder")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, pattern", [("inf", r"max_p50_ms: Input should be a finite number"),
                                            ("nan", r"max_p50_ms: Input should be a finite number"),
                                            ("-1", r"max_p50_ms: Input should be greater than 0")])
def test_tune_budget_that_means_nothing_is_refused(tmp_path, value, pattern):
    out = tmp_path / "tune"
    _refused(runner.invoke(app, ["tune", "model.keras", "--data", "digits", "--max-p50-ms", value, "-o", str(out)]),
             pattern)
    assert not out.exists()


@pytest.mark.parametrize("option, value, pattern", [
    ("--max-p50-regression", "-5%", r"max_p50_regression must be 0 or more"),
    ("--max-bytes-regression", "1e999%", r"max_bytes_regression must be 0 or more \(and finite\)"),
    ("--max-accuracy-regression", "lots", r"max_accuracy_regression must be a fraction or a percentage"),
])
def test_compare_limits_that_mean_nothing_are_refused(tmp_path, option, value, pattern):
    _refused(runner.invoke(app, ["compare", str(tmp_path), str(tmp_path), option, value]), pattern)


def test_a_time_budget_lifts_the_default_trial_count():
    from edgepress.recipe import Recipe
    from edgepress.specs.tune import DEFAULT_TRIALS, MAX_TRIALS, TuneSpec

    assert TuneSpec().trials == DEFAULT_TRIALS
    assert TuneSpec(time_budget="15m").trials == MAX_TRIALS  # the budget, not 20 trials, ends it
    assert TuneSpec(time_budget="15m", trials=5).trials == 5
    recipe = Recipe.from_dict({"model": {"zoo": "seed_mlp"}, "tune": {"sampler": "tpe", "time_budget": 900}})
    assert recipe.tune.trials == MAX_TRIALS
    help_text = _message(runner.invoke(app, ["tune", "--help"]).output)
    assert "with --time-budget: as many as fit" in help_text


def test_benchmark_model_output_without_init_is_a_clear_error():
    from edgepress.deploy.transports import parse_benchmark_model
    from edgepress.errors import EdgepressError

    output = ("INFO: Inference (avg): 1234.5\n"
              "INFO: count=50 first=1300 curr=1200 min=1100 max=1400 avg=1234.5 std=30\n")
    with pytest.raises(EdgepressError, match=r"no 'Init:' line"):
        parse_benchmark_model(output)


def test_a_library_warning_becomes_a_log_line(capsys):
    import warnings

    from edgepress import cli

    with cli._live_progress(), warnings.catch_warnings():
        warnings.simplefilter("always")  # pyproject.toml's pytest settings ignore UserWarning
        warnings.warn("a layer was built without its inputs", UserWarning, stacklevel=1)
    out = _message(capsys.readouterr().out)
    assert "warning (UserWarning, test_fuzz_inputs.py:" in out and "a layer was built without its inputs" in out


# -- results files given to compare and --baseline ------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A real tiny run: its run directory, with results.json and the artifact it measured."""
    import edgepress
    from edgepress.recipe import Recipe

    out = tmp_path_factory.mktemp("good") / "run"
    edgepress.run(Recipe.from_dict(BASE), out)
    return out


def _tampered(good_run: Path, tmp: Path, change: Callable[[dict], object] | str) -> Path:
    if isinstance(change, str):
        text = change
    else:
        raw = json.loads((good_run / "results.json").read_text())
        change(raw)
        text = json.dumps(raw)
    (tmp / "results.json").write_text(text)
    return tmp / "results.json"


def _set(path: str, value) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        *parents, key = path.split(".")
        node = raw
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[key]
        else:
            node[key] = value

    return change


_DELETE = object()
TAMPERED: dict[str, tuple[Callable[[dict], object] | str, str]] = {
    "a string where a number belongs": (_set("artifacts.0.latency.p50", "fast"), r"artifacts\.0\.latency\.p50"),
    "a row without metrics": (_set("artifacts.0.metrics", _DELETE), r"artifacts\.0\.metrics: Field required"),
    "a one-value interval": (_set("artifacts.0.latency.p50_ci", [0.1]), r"artifacts\.0\.latency\.p50_ci"),
    "a three-value interval": (_set("artifacts.0.latency.p50_ci", [0.1, 0.2, 0.3]), r"latency\.p50_ci"),
    "NaN latency": (_set("artifacts.0.latency.p50", float("nan")), r"latency\.p50.*finite number"),
    "negative bytes": (_set("artifacts.0.bytes", -5), r"artifacts\.0\.bytes: Input should be greater than or equal"),
    "a boolean size": (_set("artifacts.0.bytes", True), r"artifacts\.0\.bytes: Input should be a valid integer"),
    "an accuracy of 300%": (_set("artifacts.0.metrics.accuracy", 3.0), r"metrics\.accuracy: .*less than or equal"),
    "a device name that is a path": (_set("artifacts.0.device", "../x86-host"), r"artifacts\.0\.device"),
    "a NUL in a recorded path": (_set("artifacts.0.path", "artifacts/m\0.tflite"), r"artifacts\.0\.path: .*NUL"),
    "a 300-byte name in a recorded path": (_set("artifacts.0.path", "a" * 300 + ".tflite"),
                                          r"artifacts\.0\.path: .*at most 255 bytes"),
    "a bad sha256": (_set("artifacts.0.sha256", "../../etc/passwd"), r"artifacts\.0\.sha256"),
    "a boolean schema version": (_set("schema_version", True), r"schema_version True"),
    "100,000 nested lists": ('{"schema_version": 1, "artifacts": ' + "[" * 100_000 + "]" * 100_000 + "}",
                             r"nests too deeply"),
    "nested 40 deep in a free-form field": (_set("quantize", [json.loads("[" * 40 + "]" * 40)]),
                                            r"nests \d+ levels deep; a results\.json nests at most 32"),
    "not an object": ("[1, 2, 3]", r"not an edgepress results\.json"),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_compare_refuses_a_tampered_results_file(name, good_run, tmp_path):
    change, pattern = TAMPERED[name]
    bad = _tampered(good_run, tmp_path, change)
    _refused(runner.invoke(app, ["compare", str(bad), str(good_run / "results.json"), "--no-retime"]), pattern)
    _refused(runner.invoke(app, ["compare", str(good_run / "results.json"), str(bad), "--no-retime"]), pattern)


def test_baseline_refuses_a_tampered_results_file(good_run, tmp_path):
    bad = _tampered(good_run, tmp_path, _set("artifacts.0.latency.p50_ci", [1.0]))
    (tmp_path / "recipe.yaml").write_text(BASE_YAML)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-o", str(out), "--baseline", str(bad)])
    _refused(result, r"artifacts\.0\.latency\.p50_ci")
    assert json.loads((out / "results.json").read_text())["baseline"]["error"]  # this run's own results are kept


def test_a_recorded_path_outside_the_results_directory_is_never_read(good_run, tmp_path):
    from edgepress.compare import _artifact_file

    row = json.loads((good_run / "results.json").read_text())["artifacts"][0]
    outside = tmp_path / "elsewhere.tflite"
    outside.write_bytes((good_run / "artifacts" / Path(row["path"]).name).read_bytes())  # same sha256
    # The file is there with the recorded sha256, but outside the results file's directory: not read.
    assert _artifact_file({**row, "path": str(outside)}, good_run) is None
    assert _artifact_file({**row, "path": str(outside)}, tmp_path / "a run without artifacts") is None
    assert _artifact_file(row, good_run).resolve().is_relative_to(good_run.resolve())


class _Listener:
    """A TCP port that records every connection made to it (an SSH server a results file names)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize("command", ["compare", "baseline"])
def test_a_results_file_naming_an_ssh_host_makes_no_connection(good_run, tmp_path, command):
    listener = _Listener()
    try:
        def to_ssh(raw: dict) -> None:  # the file's recipe says x86-host is reached over ssh, at the listener
            raw["recipe"]["targets"] = [{"name": "x86-host", "reach": {
                "kind": "ssh", "host": "127.0.0.1", "port": listener.port, "check_host_key": False}}]
            raw["devices"]["x86-host"]["reach"] = "ssh"

        other = tmp_path / "other"
        other.mkdir()
        (other / "artifacts").symlink_to(good_run / "artifacts")
        hostile = _tampered(good_run, other, to_ssh)
        if command == "compare":
            result = runner.invoke(app, ["compare", str(hostile), str(good_run / "results.json")])
        else:
            (tmp_path / "recipe.yaml").write_text(BASE_YAML)
            result = runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "run"),
                                         "--baseline", str(hostile)])
        assert result.exit_code in (0, 1), result.output
        assert "Traceback" not in result.output
        time.sleep(0.5)
        assert listener.connections == 0
    finally:
        listener.close()


def test_ssh_keeps_host_key_checking_unless_the_users_profile_turns_it_off():
    from edgepress.deploy.transports import _ssh_options
    from edgepress.devices import load_device

    device = load_device("rpi4").with_overrides({"reach": {"host": "10.0.0.5"}})
    assert "StrictHostKeyChecking=yes" in _ssh_options(device)
    assert "StrictHostKeyChecking=no" not in _ssh_options(device)
    off = device.with_overrides({"reach": {"check_host_key": False}})
    assert "StrictHostKeyChecking=no" in _ssh_options(off)


# -- re-timing over ssh when both runs' files have the same name --------------------------------------------------

@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory):
    """The test SSH server of tests/deploy/test_transports.py (a real one, from asyncssh), on 127.0.0.1."""
    from tests.deploy import ssh_server
    from tests.deploy.test_transports import _start_server

    d = tmp_path_factory.mktemp("ssh")
    ssh_server.keys(d)
    server, port = _start_server(d)
    (d / "known_hosts").write_text(ssh_server.known_hosts_line(d, port))
    (d / "remote").mkdir()
    yield {"dir": d, "port": port}
    server.kill()
    server.wait(timeout=10)


def test_compare_retimes_two_runs_files_of_the_same_name_over_ssh(good_run, tmp_path, ssh_host):
    import shutil

    from tests.deploy.test_transports import _ssh_device

    new = tmp_path / "new"
    shutil.copytree(good_run, new)  # one recipe run twice: the same artifact names
    profile = _ssh_device(ssh_host).model_dump(mode="json")
    (tmp_path / "board.yaml").write_text(yaml.safe_dump({**profile, "name": "x86-host"}))
    result = runner.invoke(app, ["compare", str(good_run), str(new), "--device", str(tmp_path / "board.yaml")])
    message = _message(result.output)
    assert result.exit_code in (0, 1), result.output
    assert "re-timed now" in message and "not timed again" not in message, result.output
    assert not list((ssh_host["dir"] / "remote").iterdir())  # the work folder on the device is removed


def test_a_message_with_a_long_path_is_one_whole_line_at_any_width(tmp_path):
    # rich used to wrap error messages at the terminal's width (80 columns in a pipe): a phrase a test or a user
    # looks for broke across lines when the temp path was long. Messages are soft-wrapped now: one line each.
    out = tmp_path / ("a-long-folder-name-" * 6) / ("another-long-one-" * 6) / "run"
    out.mkdir(parents=True)
    (out / ".edgepress-run").write_text("{}\n")
    (out / "previous").write_text("not a folder")
    (tmp_path / "recipe.yaml").write_text(BASE_YAML)
    result = runner.invoke(app, ["run", str(tmp_path / "recipe.yaml"), "-o", str(out)], env={"COLUMNS": "40"})
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert f"{out / 'previous'} (where an earlier run is moved) is a file, not a folder" in line
