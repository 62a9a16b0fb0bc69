"""`edgepress tune` prunes decoder LMs: the LM space's structured_prune ratio of heads and MLP units (with its fine-tune
epochs, by logit distillation from the unpruned model when the trial distills) beside distillation, weight bits,
block size and cache length; a CI-sized tune of the zoo's char_gpt_tiny whose pruned trials carry perplexity and
decode tokens/s, kept by a re-read study, and whose best-<device>.yaml runs as it is; and the ratio ranges a decoder
cannot take, refused before any work."""

import json

import optuna
import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.cli import app  # noqa: E402
from edgepress.devices import load_device  # noqa: E402
from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402
from edgepress.recipe import Recipe  # noqa: E402
from edgepress.specs.tune import TuneSpec  # noqa: E402
from edgepress.tune.space import Space, recipe_for  # noqa: E402

cli = CliRunner()
STUDENT = {"width": 16, "layers": 1, "heads": 2, "epochs": 1}


def _space(**space) -> Space:
    spec = TuneSpec.model_validate({"space": {"student": STUDENT, **space}})
    return Space.of(spec, [load_device("x86-host")], None, lm_cache=72)


def test_a_pruned_trial_is_structured_prune_after_its_distillation_and_a_valid_recipe():
    space = _space(ratio=[0, 0.5], fine_tune_epochs=[1, 2], cache_len=[64, 72])
    assert space.ratio == (0, 0.5) and space.round_to == [1, 8]  # x86-host's channel_multiple
    chosen = {"ratio": 0.5, "fine_tune_epochs": 2, "round_to": 8, "distill": True, "weight_bits": 4,
              "block_size": 32, "cache_len": 64}
    params = space.suggest(optuna.trial.FixedTrial(chosen))
    assert params == chosen
    steps = space.steps(params)
    assert steps == [{"type": "lm_distill", **STUDENT},
                     {"type": "structured_prune", "ratio": 0.5, "criterion": "taylor", "fine_tune_epochs": 2,
                      "distill": True, "round_to": 8}]
    # Without distillation the source itself is pruned and fine-tuned on the windows.
    plain = space.suggest(optuna.trial.FixedTrial({**chosen, "distill": False, "round_to": 1}))
    assert space.steps(plain) == [{"type": "structured_prune", "ratio": 0.5, "criterion": "taylor",
                                   "fine_tune_epochs": 2, "distill": False}]
    # Ratio 0 asks no epochs or multiple: a post-training trial.
    none = space.suggest(optuna.trial.FixedTrial({"ratio": 0.0, "distill": False, "weight_bits": 8,
                                                  "cache_len": 72}))
    assert none == {"ratio": 0.0, "distill": False, "weight_bits": 8, "cache_len": 72} and space.steps(none) == []
    # What a trial runs is a plain recipe `edgepress run` validates.
    base = {"model": {"zoo": "char_gpt_tiny"}, "data": {"dataset": "python_source", "train_size": 10},
            "lm": {"cache_len": 72, "prompt_len": 8}}
    recipe = recipe_for(base, "t001", steps, space.lm_exports(params), ["x86-host"], params)
    checked = Recipe.model_validate(recipe)
    assert [s.type for s in checked.steps] == ["lm_distill", "structured_prune"] and checked.lm.cache_len == 64
    assert space.to_dict()["ratio"] == [0, 0.5] and space.to_dict()["fine_tune_epochs"] == [1, 2]


def test_the_default_range_is_narrowed_to_what_the_decoder_takes_and_a_given_one_refused():
    two_heads = build_char_gpt(width=16, layers=1, heads=2, max_len=96)  # 2 heads, 32 MLP units
    space = _space()
    said = space.fit_decoder_ratio(two_heads, given=False)
    assert space.ratio == (0.0, 0.5) and "2 attention heads and 32 MLP units" in said
    assert _space(ratio=[0.1, 0.4]).fit_decoder_ratio(two_heads, given=True) is None
    with pytest.raises(EdgepressError, match=r"tune.space.ratio \[0.2, 0.9\] goes past .* 2 attention heads .* "
                                             r"above 0.5 .* give tune.space.ratio \[0.2, 0.5\]"):
        _space(ratio=[0.2, 0.9]).fit_decoder_ratio(two_heads, given=True)
    one_head = build_char_gpt(width=16, layers=1, heads=1, max_len=96)
    space = _space()
    assert "too few to prune" in space.fit_decoder_ratio(one_head, given=False) and space.ratio == (0.0, 0.0)
    with pytest.raises(EdgepressError, match=r"1 attention heads .* cannot be pruned: give tune.space.ratio \[0, 0\]"):
        _space(ratio=[0.0, 0.5]).fit_decoder_ratio(one_head, given=True)


def _tune_recipe(model: dict, space: dict, seed: int = 1, **gates) -> dict:
    return {
        "name": "gpt_prune_tune",
        "model": model,
        "data": {"dataset": "python_source", "train_size": 300, "test_size": 8, "check_samples": 2},
        "lm": {"cache_len": 72, "prompt_len": 8, "eval_windows": 4},
        "measure": {"runs": 10, "warmup": 1, "threads": 1, "max_seconds": 2},
        "gates": {"max_perplexity": 200, "min_decode_tokens_per_s": 1, **gates},
        "tune": {"trials": 2, "seed": seed, "space": {"student": STUDENT, **space}},
    }


@pytest.mark.parametrize("heads, ratio, said", [
    (1, [0.0, 0.5], "cannot be pruned: give tune.space.ratio [0, 0]"),
    (2, [0.0, 0.9], "give tune.space.ratio [0, 0.5]"),
    (None, [0.6, 0.9], "give tune.space.ratio [0.5, 0.5]"),  # the zoo's char_gpt_tiny (2 heads): not trained first
])
def test_a_ratio_range_the_decoder_cannot_take_exits_2_before_any_work(tmp_path, heads, ratio, said):
    if heads is None:
        model = {"zoo": "char_gpt_tiny", "train_epochs": 1}
    else:
        DecoderSource(build_char_gpt(width=16, layers=1, heads=heads, max_len=96), window=64).write(tmp_path / "gpt")
        model = {"path": str(tmp_path / "gpt")}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(_tune_recipe(model, {"ratio": ratio})))
    result = cli.invoke(app, ["tune", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # as one line, whatever the terminal's width
    assert "goes past what this decoder can lose" in text and said in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()  # nothing trained, measured or written


def test_a_ci_sized_tune_prunes_char_gpt_and_its_pick_runs(tmp_path):
    # The source's float files are larger than max_bytes, so the pick is a trial's int4 file; ratio 0.5 of 2 heads
    # and 32 units is the one ratio: both trials are pruned, one distilled and one not (TPE's random start, seed 0).
    space = {"ratio": [0.5, 0.5], "fine_tune_epochs": [1], "round_to": [1], "distill": [False, True],
             "weight_bits": [4], "block_size": [32], "cache_len": [64]}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(_tune_recipe({"zoo": "char_gpt_tiny", "train_epochs": 1}, space, seed=0,
                                                max_bytes=40_000)))
    out = tmp_path / "out"
    result = cli.invoke(app, ["tune", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "pruning heads and MLP units" in " ".join(result.output.split())
    tune = json.loads((out / "tune.json").read_text())
    assert tune["space"]["ratio"] == [0.5, 0.5]
    source_params = tune["source"]["params"]
    pruned = [t for t in tune["trials"] if t["status"] == "complete"]
    assert len(pruned) == 2 and {t["params"]["distill"] for t in pruned} == {False, True}
    for trial in pruned:
        assert trial["params"]["ratio"] == 0.5 and trial["params"]["fine_tune_epochs"] == 1
        stages = [m["stage"] for m in trial["models"]]
        assert stages[-1] == "structured_prune" and ("lm_distill" in stages) == trial["params"]["distill"]
        # Pruning took parameters from the model it got (the source, or the distilled student).
        assert trial["models"][-1]["params"] < trial["models"][-2]["params"] <= source_params
        assert trial["params_count"] == trial["models"][-1]["params"] and trial["models"][-1]["perplexity"] > 1
        assert trial["rows"] and all(1 < r["perplexity"] < 200 and r["decode_tokens_per_s"] > 0
                                     for r in trial["rows"])
    # Read again from the study (the same command: its trials are all there), the trials keep their numbers.
    again = cli.invoke(app, ["tune", str(path), "-o", str(out)])
    assert again.exit_code == 0, again.output
    assert "already has 2 finished trials" in " ".join(again.output.split())
    reread = json.loads((out / "tune.json").read_text())
    for before, after in zip(tune["trials"], reread["trials"], strict=True):
        assert after["params"] == before["params"] and after["rows"] == before["rows"]
        assert after["chosen"] == before["chosen"]
    # The pick is a pruned trial's int4 file, and its recipe runs as it is.
    best = reread["best"]["x86-host"]
    assert best is not None and best["trial"] is not None and best["bytes"] <= 40_000
    recipe = yaml.safe_load((out / "best-x86-host.yaml").read_text())
    assert [s["type"] for s in recipe["steps"]][-1] == "structured_prune"
    run = cli.invoke(app, ["run", str(out / "best-x86-host.yaml"), "-o", str(tmp_path / "best")])
    assert run.exit_code == 0, run.output
    results = json.loads((tmp_path / "best" / "results.json").read_text())
    assert results["models"][-1]["stage"] == "structured_prune" and results["models"][-1]["heads"] == 1
    (row,) = results["artifacts"]
    # The same file again: its name is the recipe's (best-x86-host_...) where the trial's was t00N_...
    assert row["name"].removeprefix("best-x86-host") == best["artifact"].removeprefix(f"t{best['trial']:03d}")
    assert row["metrics"]["perplexity"] == pytest.approx(best["perplexity"], rel=0.02)
    assert row["lm"]["decode_tokens_per_s"]["p50"] > 0


def test_a_decoder_without_an_lm_section_is_tuned_as_an_lm(tmp_path):
    # `edgepress run` measures a decoder as an LM with lm:'s defaults; the tune does too, with the LM space (before,
    # it tried the device profile's precisions, fp16 and full int8, which a decoder's exporters refuse).
    DecoderSource(build_char_gpt(width=16, layers=1, heads=2, max_len=96), window=64).write(tmp_path / "gpt")
    recipe = _tune_recipe({"path": str(tmp_path / "gpt")}, {"fine_tune_epochs": [1], "round_to": [1],
                                                           "distill": [False], "weight_bits": [4], "block_size": [32]})
    del recipe["lm"]
    recipe["tune"]["trials"] = 1
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    result = cli.invoke(app, ["tune", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 attention heads and 32 MLP units per block" in " ".join(result.output.split())
    tune = json.loads((out / "tune.json").read_text())
    assert tune["objectives"][0] == "perplexity (min)" and tune["space"]["ratio"] == [0.0, 0.5]
    assert tune["space"]["lm"]["cache_len"] == [96]  # lm:'s default 128, within the model's 96 positions
    (trial,) = tune["trials"]
    assert trial["status"] == "complete" and trial["rows"]
    assert all(r["precision"] == "int4_weight" and r["perplexity"] > 1 and r["decode_tokens_per_s"] > 0
               for r in trial["rows"])
