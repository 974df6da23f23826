"""Accuracy against cost: the Pareto front against a brute-force dominance check, its ties,
both modes and the trials without a value or a cost; the two-panel plot and its k-fold overlay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from hpsearch.analysis import MissingDataError, front_table, pareto_front, plot_pareto


def _trials(scores, macs, **extra) -> pd.DataFrame:
    ids = [f"t{i}" for i in range(len(scores))]
    return pd.DataFrame({"trial_id": ids, "best_val_accuracy": scores, "macs": macs, **extra})


def _front(df: pd.DataFrame, **kw) -> list[str]:
    return df.loc[pareto_front(df, **kw), "trial_id"].tolist()


def _dominated_oracle(score: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """On the front (higher score, lower cost better): finite, and no other point is at least
    as good in both and strictly better in one."""
    ok = np.isfinite(score) & np.isfinite(cost)
    on = np.zeros(len(score), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (score >= score[i]) & (cost <= cost[i])
        strictly = others & ((score > score[i]) | (cost < cost[i]))
        on[i] = not strictly.any()
    return on


def test_the_front_is_the_cheapest_way_to_each_better_score():
    df = _trials([0.5, 0.7, 0.6, 0.9, 0.8], [1e6, 2e6, 3e6, 9e6, 4e6])
    assert _front(df) == ["t0", "t1", "t3", "t4"]
    s = pareto_front(df)
    assert s.dtype == bool and s.name == "pareto" and s.index.equals(df.index)
    assert pareto_front(df, cost="params").name == "pareto_params"


def test_ties_identical_trials_are_on_it_together_and_equal_value_costs_more_is_off():
    df = _trials(
        [0.7, 0.7, 0.7, 0.6, 0.8, 0.8],
        [1e6, 1e6, 2e6, 1e6, 5e6, 5e6],
    )
    # t0, t1: identical, both on; t2: as good as t0 but dearer; t3: as cheap as t0 but worse
    assert _front(df) == ["t0", "t1", "t4", "t5"]


def test_min_mode_prefers_the_lower_value():
    df = _trials([0.5, 0.3, 0.4, 0.2], [1e6, 2e6, 3e6, 4e6])
    df = df.rename(columns={"best_val_accuracy": "best_val_loss"})
    assert _front(df, metric="val_loss") == ["t0", "t1", "t3"]  # min: the loss's own mode
    assert _front(df, metric="val_loss", mode="max") == ["t0"]


def test_trials_without_a_value_or_a_cost_are_off_it():
    df = _trials([None, 0.9, 0.5, np.nan, 0.6], [1e5, None, 1e6, 1e4, np.inf])
    assert _front(df) == ["t2"]  # t1 would dominate it, but has no cost
    assert not pareto_front(df.drop(columns="macs")).any()  # a run without MACs
    assert not pareto_front(df.iloc[:0]).any()
    empty_value = _trials([None, None], [1.0, 2.0])
    assert not pareto_front(empty_value).any()


@pytest.mark.parametrize("seed", range(5))
def test_the_front_agrees_with_a_brute_force_dominance_check(seed):
    rng = np.random.default_rng(seed)
    n = 60
    score = rng.choice([0.5, 0.6, 0.7, 0.8, np.nan], n)  # few values: many ties
    cost = rng.choice([1e5, 3e5, 1e6, 3e6, np.nan], n)
    df = _trials(score, cost).set_axis(np.arange(n) * 7 + 3)  # an index that is not 0..n-1
    assert (pareto_front(df).to_numpy() == _dominated_oracle(score, cost)).all()
    flipped = _dominated_oracle(-score, cost)
    loss = df.rename(columns={"best_val_accuracy": "best_val_loss"})
    assert (pareto_front(loss, metric="val_loss").to_numpy() == flipped).all()


def test_front_table_lists_both_fronts_cheapest_first(tables):
    front = front_table(tables["trials"])
    assert front["trial_id"].tolist() == ["t3", "t2", "t0", "t1"]
    assert front.set_index("trial_id")["pareto"].to_dict() == {
        "t3": True, "t2": True, "t0": False, "t1": True,
    }  # fmt: skip
    assert front.set_index("trial_id")["pareto_params"].to_dict() == {
        "t3": False, "t2": False, "t0": True, "t1": True,
    }  # fmt: skip
    assert front.loc[front.trial_id == "t1", "label"].item() == "AlexNet adam"


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_the_plot_has_two_log_panels_with_the_front_named(tables):
    fig = plot_pareto(tables["trials"])
    by_macs, by_params = fig.axes[:2]
    assert by_macs.get_xscale() == by_params.get_xscale() == "log"
    assert "MACs" in by_macs.get_xlabel() and "parameters" in by_params.get_xlabel()
    assert {"t3 FlatAlexNet adam", "t2 FlatAlexNet sgd", "t1 AlexNet adam"} == set(_texts(by_macs))
    assert {"t0 AlexNet sgd", "t1 AlexNet adam"} == set(_texts(by_params))
    (step,) = [ln for ln in by_macs.get_lines() if ln.get_drawstyle() == "steps-post"]
    assert list(step.get_xdata()) == [1e6, 2e6, 9e6]
    assert list(step.get_ydata()) == [0.4, 0.75, 0.8]
    assert not any(isinstance(c, ErrorbarContainer) for c in by_macs.containers)


def test_after_kfold_the_compared_configs_stand_with_their_intervals(tables):
    from hpsearch.analysis import compare_configs

    folds = tables["folds"].replace({"config_id": {"AlexNet": "t1", "FlatAlexNet": "t2"}})
    comparison = compare_configs(folds)
    fig = plot_pareto(tables["trials"], comparison)
    by_macs = fig.axes[0]
    (bars,) = [c for c in by_macs.containers if isinstance(c, ErrorbarContainer)]
    x, y = bars.lines[0].get_data()
    means = comparison[comparison.metric == "accuracy"].set_index("config_id")["mean"]
    assert dict(zip(x, y, strict=True)) == pytest.approx({9e6: means["t1"], 2e6: means["t2"]})
    rows = comparison[comparison.metric == "accuracy"].set_index("config_id")
    drawn = {seg[0][0]: (seg[0][1], seg[1][1]) for seg in bars.lines[2][0].get_segments()}
    for config, cost in (("t1", 9e6), ("t2", 2e6)):  # the bar spans the 95 % t interval
        assert drawn[cost] == pytest.approx(
            (rows.loc[config, "ci_low"], rows.loc[config, "ci_high"])
        )
    assert {"t1 (k-fold)", "t2 (k-fold)"} <= set(_texts(by_macs))
    # a config that is no trial of the run (no cost to place it at) is left out
    other = compare_configs(tables["folds"])
    assert not any(
        isinstance(c, ErrorbarContainer)
        for c in plot_pareto(tables["trials"], other).axes[0].containers
    )


def test_a_panel_without_its_cost_says_so_and_no_cost_at_all_is_missing_data(tables):
    trials = tables["trials"]
    fig = plot_pareto(trials.drop(columns="params"))
    assert "no trial has its parameters" in " ".join(_texts(fig.axes[1]))
    with pytest.raises(MissingDataError, match="no trial has both a best_val_accuracy and its"):
        plot_pareto(trials.drop(columns=["params", "macs"]))
