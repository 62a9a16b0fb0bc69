"""`edgepress tune` on a decoder language model: a CI-sized search (char_gpt_tiny, 3 trials) over distillation,
weight bits, int4 block size and cache length, perplexity the accuracy objective (minimized) and decode tokens/s
the latency (maximized); and the LM space's choices turned into steps, exports and the trial's cache length."""

import json

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from edgepress import verdict
from edgepress.cli import app
from edgepress.devices import load_device
from edgepress.errors import EdgepressError
from edgepress.specs.tune import TuneSpec
from edgepress.tune.space import Space, key_of, recipe_for

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

cli = CliRunner()

LM_TUNE = {
    "name": "gpt_tune",
    "model": {"zoo": "char_gpt_tiny", "train_epochs": 1},
    "data": {"dataset": "python_source", "train_size": 300, "test_size": 8, "check_samples": 2},
    "lm": {"cache_len": 72, "prompt_len": 8, "eval_windows": 4},
    "measure": {"runs": 10, "warmup": 1, "threads": 1, "max_seconds": 2},
    "gates": {"max_perplexity": 200, "min_decode_tokens_per_s": 1},
    "tune": {"trials": 3, "seed": 1, "space": {"ratio": [0.0, 0.0],
        "distill": [False, True], "weight_bits": [8, 4], "block_size": [None, 32], "cache_len": [64, 96],
        "student": {"width": 16, "layers": 1, "heads": 2, "epochs": 1}}},
}


def _space(**space) -> Space:
    # Without pruning (tests/tune/test_tune_lm_prune.py has the ratio): the choices this file checks, alone.
    spec = TuneSpec.model_validate({"space": {"student": {"width": 16, "heads": 2}, "ratio": [0, 0], **space}})
    return Space.of(spec, [load_device("x86-host")], None, lm_cache=128)


def test_the_lm_space_turns_choices_into_steps_exports_and_a_cache_length():
    space = _space(cache_len=[64, 128])
    params = space.suggest(optuna.trial.FixedTrial({"distill": True, "weight_bits": 4, "block_size": 32,
                                                    "cache_len": 64}))
    assert params == {"distill": True, "weight_bits": 4, "block_size": 32, "cache_len": 64}
    assert space.steps(params) == [{"type": "lm_distill", "width": 16, "heads": 2}]
    assert space.lm_exports(params) == [{"format": "tflite", "precision": "int4_weight", "block_size": 32},
                                        {"format": "onnx", "precision": "int4_weight", "block_size": 32}]
    eight = space.suggest(optuna.trial.FixedTrial({"distill": False, "weight_bits": 8, "cache_len": 128}))
    assert "block_size" not in eight and space.steps(eight) == []
    assert space.lm_exports(eight) == [{"format": "tflite", "precision": "int8_weight"}]
    base = {"model": {"path": "m"}, "lm": {"cache_len": 128, "prompt_len": 16, "eval_windows": 4}}
    short = recipe_for(base, "t", [], [], [], params)
    assert short["lm"]["cache_len"] == 64 and base["lm"]["cache_len"] == 128
    # The cache length is part of what makes a trial's artifacts: two caches are two trials, not one cached.
    assert key_of(short) != key_of(recipe_for(base, "t", [], [], [], {**params, "cache_len": 128}))


def test_the_lm_space_refuses_what_no_device_or_format_can_take():
    # nvidia-gpu runs ONNX only, and onnxruntime has no int8 weight-only decoder: an 8-bit-only space is empty there.
    with pytest.raises(EdgepressError, match="8 bits is TFLite only"):
        Space.of(TuneSpec.model_validate({"space": {"weight_bits": [8]}}), [load_device("nvidia-gpu")], None,
                 lm_cache=128)
    with pytest.raises(ValueError, match="block_size 16"):
        TuneSpec.model_validate({"space": {"block_size": [16]}})
    with pytest.raises(ValueError, match="cache_len"):
        TuneSpec.model_validate({"space": {"cache_len": [1]}})


def test_a_floor_gate_is_over_budget_below_it_and_perplexity_above_it():
    assert verdict.over_budget("min_decode_tokens_per_s", 500, 1000) == pytest.approx(0.5)
    assert verdict.over_budget("min_decode_tokens_per_s", 2000, 1000) < 0
    assert verdict.over_budget("max_perplexity", 6.0, 5.0) == pytest.approx(0.2)
    point = {"accuracy_drop": None, "p50_ms": 1.0, "bytes": 10, "perplexity": 6.0, "decode_tokens_per_s": 500}
    assert verdict.misses(point, {"max_perplexity": 5.0, "min_decode_tokens_per_s": 1000, "max_bytes": None}) == {
        "max_perplexity": pytest.approx(0.2), "min_decode_tokens_per_s": pytest.approx(0.5)}


def test_a_ci_sized_lm_tune_runs_through_the_cli(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(LM_TUNE))
    out = tmp_path / "out"
    result = cli.invoke(app, ["tune", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    tune = json.loads((out / "tune.json").read_text())
    assert tune["objectives"] == ["perplexity (min)", "decode tokens/s on x86-host (max)", "bytes (min)"]
    assert tune["budgets"] == {"max_perplexity": 200, "min_decode_tokens_per_s": 1, "max_bytes": None}
    assert tune["source"]["perplexity"] > 1
    trials = [t for t in tune["trials"] if t["status"] == "complete"]
    assert len(trials) == 3 and len(tune["trials"]) == 3
    for trial in trials:
        params = trial["params"]
        assert set(params) >= {"distill", "weight_bits", "cache_len"}
        assert trial["rows"], trial
        for row in trial["rows"]:
            assert row["precision"] == f"int{params['weight_bits']}_weight"
            assert 1 < row["perplexity"] < 200 and row["decode_tokens_per_s"] > 0
        assert trial["chosen"]["x86-host"]["perplexity"] == pytest.approx(
            min(r["perplexity"] for r in trial["rows"] if r["artifact"] == trial["chosen"]["x86-host"]["artifact"]))
        assert (trial["models"][-1]["stage"] == "lm_distill") == params["distill"]
    # Optuna was told perplexity and tokens/s in their own directions.
    study = optuna.load_study(study_name="edgepress-tune", storage=f"sqlite:///{out / 'study.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE", "MINIMIZE"]
    for t in study.trials:
        row = next(r for r in tune["trials"] if r["number"] == t.number)["chosen"]["x86-host"]
        assert t.values[0] == pytest.approx(row["perplexity"]) and t.values[1] == pytest.approx(
            row["decode_tokens_per_s"])
    best = tune["best"]["x86-host"]
    assert best is not None and best["perplexity"] is not None
    again = yaml.safe_load((out / "best-x86-host.yaml").read_text())
    if best["trial"] is not None:
        params = tune["trials"][best["trial"]]["params"]
        assert again["lm"]["cache_len"] == params["cache_len"]
        assert again["exports"][0]["precision"] == f"int{params['weight_bits']}_weight"
    assert "perplexity" in result.output and "tokens/s" in result.output
