"""edgepress/stats.py: faster only beyond the intervals, ties to the smaller then the more accurate artifact.

The rows here are inputs built from per-run times through the runner's own statistics (latency_stats), so
each interval is the bootstrap interval of real numbers, not one typed in.
"""

import numpy as np
import pytest

from edgepress.deploy.runner import latency_stats
from edgepress.stats import busy_warnings, faster, rank_best, ratio_interval, speed_verdict, tie_notes
from edgepress.verdict import choose_best


def _row(name, center_ms, spread_ms, n=400, bytes_=1000, accuracy=0.9, seed=0, passed=True, device="host"):
    times = np.random.default_rng(seed).normal(center_ms, spread_ms, n).clip(0.001)
    return {"name": name, "device": device, "bytes": bytes_, "metrics": {"accuracy": accuracy},
            "latency": latency_stats(list(times), 0), "passed": passed}


def test_faster_only_when_the_intervals_do_not_overlap():
    slow, fast = _row("slow", 1.0, 0.05), _row("fast", 0.5, 0.05, seed=1)
    close = _row("close", 1.0 + 0.001, 0.05, seed=2)  # 0.1% apart, far inside the noise
    assert faster(fast, slow) and not faster(slow, fast)
    assert speed_verdict(fast, slow) == "faster" and speed_verdict(slow, fast) == "slower"
    assert not faster(close, slow) and not faster(slow, close)
    assert speed_verdict(close, slow) == "tie"


def test_without_an_interval_only_the_point_is_left():
    a, b = _row("a", 1.0, 0.05), _row("b", 0.5, 0.05, seed=1)
    for row in (a, b):
        del row["latency"]["p50_ci"]  # a results.json from before intervals
    assert faster(b, a)
    a["latency"]["p50"] = None
    assert speed_verdict(a, b) == "unknown" and not faster(a, b) and not faster(b, a)


def test_rank_best_takes_the_fastest_when_it_is_clearly_faster():
    rows = [_row("big_fast", 0.5, 0.02, bytes_=4000), _row("small_slow", 1.0, 0.02, bytes_=1000, seed=1)]
    assert rank_best(rows)["name"] == "big_fast"


def test_rank_best_among_tied_fastest_prefers_the_smaller_then_the_more_accurate():
    fp32 = _row("fp32", 0.115, 0.02, bytes_=4000, accuracy=0.99)
    fp16 = _row("fp16", 0.104 + 0.011 * 0.99, 0.02, bytes_=2000, accuracy=0.99, seed=1)  # within the noise
    assert speed_verdict(fp16, fp32) == "tie"
    assert rank_best([fp32, fp16])["name"] == "fp16"  # smaller wins the tie
    twin = _row("twin", 0.115, 0.02, bytes_=2000, accuracy=0.995, seed=2)
    assert rank_best([fp32, fp16, twin])["name"] == "twin"  # same size: the more accurate
    slow_small = _row("slow_small", 0.5, 0.02, bytes_=10, seed=3)
    assert rank_best([fp32, fp16, slow_small])["name"] == "fp16"  # not tied: its size does not count
    assert rank_best([]) is None


def test_choose_best_calls_rank_best_per_device_on_passing_rows():
    rows = [_row("fp32", 0.115, 0.02, bytes_=4000), _row("fp16", 0.115, 0.02, bytes_=2000, seed=1),
            _row("int8", 0.05, 0.01, bytes_=1000, passed=False, seed=2),
            _row("fp32", 0.2, 0.01, bytes_=4000, device="pi", seed=3)]
    assert choose_best(rows) == {"host": "fp16", "pi": "fp32"}
    notes = tie_notes({"best": choose_best(rows), "artifacts": rows})
    assert len(notes) == 1 and "fp16 ties on speed with fp32" in notes[0]


def test_ratio_interval_is_conservative():
    base, row = _row("base", 1.0, 0.05), _row("row", 0.5, 0.05, seed=1)
    point, low, high = ratio_interval(base, row)
    (bl, bh), (rl, rh) = base["latency"]["p50_ci"], row["latency"]["p50_ci"]
    assert point == pytest.approx(base["latency"]["p50"] / row["latency"]["p50"])
    assert (low, high) == pytest.approx((bl / rh, bh / rl))
    assert low < point < high


def test_busy_warnings_name_a_device_whose_load_exceeded_its_cores():
    calm, busy = _row("a", 1, 0.1), _row("b", 1, 0.1, device="pi")
    calm["host"] = {"cores": 4, "load_before": 0.5, "load_after": 1.2}
    busy["host"] = {"cores": 2, "load_before": 1.0, "load_after": 3.5}
    warnings = busy_warnings({"artifacts": [calm, busy]})
    assert len(warnings) == 1 and warnings[0].startswith("pi was busy") and "1.0 / 3.5" in warnings[0]
