"""The zoo's char_gpt_small: the size benchmarks/lm.py compares with char_gru (its int4 files under 133 KB)."""

import pytest

pytest.importorskip("torch")

from edgepress.models import zoo  # noqa: E402
from edgepress.recipe import Recipe  # noqa: E402
from tests.conftest import REPO  # noqa: E402


def test_char_gpt_small_is_the_size_the_benchmark_names_and_takes_the_recipes_cache():
    model = zoo.build("char_gpt_small", num_classes=97)
    assert sum(p.numel() for p in model.parameters()) == 141_696
    config = model.config
    assert (config.width, config.layers, config.heads, config.hidden, config.tie) == (96, 1, 4, 288, True)
    recipe = Recipe.from_yaml(REPO / "recipes" / "python_char_gpt.yaml")
    assert recipe.lm.cache_len <= config.max_len  # the benchmark runs the recipe with this model
    assert zoo.ZOO["char_gpt_small"].saved_as == "decoder"
