"""benchmarks/int8_speed.py: a run of some of its models (`--models vit`) replaces only their subsections of the
`## int8 speed` section, keeping the others and the section's opening and closing lines."""

import importlib.util

from tests.conftest import REPO


def _int8_speed():
    spec = importlib.util.spec_from_file_location("int8_speed", REPO / "benchmarks" / "int8_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OLD = """## int8 speed

Written by the whole run.

### seed_cnn (2,794,240 MACs)

seed table

### vit (1,170,688 MACs)

old vit table

Measured on python 3.11.7, the old run.
"""


def test_a_run_of_some_models_replaces_only_their_subsections(tmp_path):
    module = _int8_speed()
    new = "## int8 speed\n\nWritten by a run of vit.\n\n### vit (1,170,688 MACs)\n\nnew vit table\n\nMeasured on new.\n"
    merged = module.with_models(OLD, new)
    assert merged.startswith("## int8 speed\n\nWritten by the whole run.\n\n### seed_cnn")
    assert "seed table" in merged and "new vit table" in merged and "old vit table" not in merged
    assert merged.rstrip().endswith("Measured on python 3.11.7, the old run.")
    added = module.with_models(OLD, new.replace("### vit", "### bert"))
    assert added.index("old vit table") < added.index("new vit table") < added.index("Measured on python")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n" + OLD + "\n## transformers\n\nkept\n")
    assert module.section(results, "int8 speed").startswith("## int8 speed\n\nWritten by the whole run.")
    assert "## transformers" not in module.section(results, "int8 speed")
    assert module.section(results, "nope") == ""
