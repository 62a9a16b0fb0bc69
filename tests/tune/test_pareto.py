"""pareto_front: the points no other point dominates (accuracy up, p50 and bytes down)."""

from edgepress.tune import pareto_front


def p(name, accuracy, p50, size):
    return {"artifact": name, "accuracy": accuracy, "p50_ms": p50, "bytes": size}


def names(points):
    return [q["artifact"] for q in points]


def test_a_point_better_on_every_axis_removes_the_other():
    assert names(pareto_front([p("worse", 0.90, 2.0, 2000), p("better", 0.95, 1.0, 1000)])) == ["better"]


def test_trade_offs_all_stay_sorted_fastest_first():
    points = [p("accurate", 0.99, 3.0, 5000), p("fast", 0.90, 0.5, 4000), p("small", 0.92, 2.0, 800)]
    assert names(pareto_front(points)) == ["fast", "small", "accurate"]


def test_better_on_one_axis_equal_on_the_others_dominates():
    assert names(pareto_front([p("a", 0.95, 1.0, 1000), p("b", 0.95, 1.0, 999)])) == ["b"]


def test_equal_points_are_all_kept():
    assert names(pareto_front([p("a", 0.95, 1.0, 1000), p("b", 0.95, 1.0, 1000)])) == ["a", "b"]


def test_points_missing_an_objective_are_left_out():
    points = [p("unmeasured", None, 0.1, 10), p("slow", 0.9, 5.0, 5000)]
    assert names(pareto_front(points)) == ["slow"]


def test_other_objectives_can_be_named():
    points = [{"artifact": "x", "acc": 0.9, "ms": 2.0}, {"artifact": "y", "acc": 0.8, "ms": 3.0}]
    assert names(pareto_front(points, maximize=("acc",), minimize=("ms",))) == ["x"]


def test_empty_gives_empty():
    assert pareto_front([]) == []


def test_a_larger_random_set_matches_the_definition():
    import random

    rng = random.Random(0)
    points = [p(str(i), rng.random(), rng.random(), rng.randint(1, 100)) for i in range(60)]
    front = pareto_front(points)

    def dominates(a, b):
        no_worse = a["accuracy"] >= b["accuracy"] and a["p50_ms"] <= b["p50_ms"] and a["bytes"] <= b["bytes"]
        return no_worse and (a["accuracy"], a["p50_ms"], a["bytes"]) != (b["accuracy"], b["p50_ms"], b["bytes"])

    assert front and len(front) < len(points)
    for q in points:
        assert (q in front) == (not any(dominates(o, q) for o in points))
