from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from hpsearch.analysis import (
    MissingDataError,
    plot_accuracy_curves,
    plot_architecture_comparison,
    plot_dropout_comparison,
    plot_loss_curves,
    plot_optimizer_comparison,
    plot_regularization_comparison,
    regularization_labels,
    rolling_loss,
)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()] + [
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    ]


def test_rolling_mean_per_trial_matches_pandas(tables):
    steps = tables["steps"]
    curves = rolling_loss(steps, window=10)
    t0 = curves[curves["trial_id"] == "t0"].reset_index(drop=True)
    raw = steps[steps["trial_id"] == "t0"]["loss"].reset_index(drop=True)
    pd.testing.assert_series_equal(t0["mean"], raw.rolling(10).mean(), check_names=False)
    pd.testing.assert_series_equal(t0["std"], raw.rolling(10).std(), check_names=False)
    assert t0["mean"].iloc[:9].isna().all() and t0["mean"].iloc[9:].notna().all()


def test_rolling_by_group_averages_trials_then_rolls(tables):
    steps, trials = tables["steps"], tables["trials"]
    w = 7
    curves = rolling_loss(steps, trials, window=w, by="arch")
    assert set(curves["arch"]) == {"AlexNet", "FlatAlexNet", "NarrowAlexNet"}
    alex = curves[curves["arch"] == "AlexNet"]
    # AlexNet: t0 and t1 (t6 is infeasible and has no steps), same length
    a = steps.loc[steps["trial_id"] == "t0", "loss"].to_numpy()
    b = steps.loc[steps["trial_id"] == "t1", "loss"].to_numpy()
    per_step = (a + b) / 2
    np.testing.assert_allclose(alex["loss"], per_step)
    np.testing.assert_allclose(
        alex["mean"].to_numpy()[w - 1 :], np.convolve(per_step, np.ones(w) / w, mode="valid")
    )
    np.testing.assert_allclose(
        alex["std"].to_numpy()[w - 1 :], sliding_window_view(per_step, w).std(axis=1, ddof=1)
    )
    assert (alex["trials"] == 2).all()
    # FlatAlexNet: t3 stopped after 2 epochs, so later steps average t2 alone
    flat = curves[curves["arch"] == "FlatAlexNet"].set_index("step")
    assert flat.loc[60, "trials"] == 2 and flat.loc[61, "trials"] == 1
    t2 = steps[steps["trial_id"] == "t2"].set_index("step")["loss"]
    assert flat.loc[100, "loss"] == pytest.approx(t2.loc[100])


def test_diverged_trials_are_left_out_unless_asked_for(tables):
    steps, trials = tables["steps"], tables["trials"]
    assert "t5" not in set(rolling_loss(steps, trials, window=5)["trial_id"])
    kept = rolling_loss(steps, trials, window=5, exclude_status=())
    t5 = kept[kept["trial_id"] == "t5"]
    assert t5["loss"].iloc[-1] != t5["loss"].iloc[-1]  # inf became NaN
    assert np.isfinite(t5["mean"].dropna()).all()
    assert "t5" in set(rolling_loss(steps, trials, window=5, trial_ids=["t5"])["trial_id"])


def test_min_periods(tables):
    curves = rolling_loss(tables["steps"], window=10, min_periods=1, trial_ids=["t0"])
    assert curves["mean"].iloc[0] == pytest.approx(curves["loss"].iloc[0])


def test_loss_curves_per_trial(tables):
    fig = plot_loss_curves(tables["steps"], tables["trials"], window=10)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 5  # t0-t4; t5 diverged, t6 infeasible
    assert ax.get_xlabel() == "training step (mini-batch)"
    assert "rolling mean (10 steps)" in ax.get_ylabel()
    assert "t1 AlexNet adam" in legend_texts(fig)


def test_loss_curves_std_by_group(tables):
    fig = plot_loss_curves(tables["steps"], tables["trials"], window=10, by="arch", stat="std")
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 3
    assert "rolling std" in ax.get_ylabel() and "by arch" in ax.get_title()
    assert "AlexNet (2 trials)" in legend_texts(fig)
    y = ax.get_lines()[0].get_ydata()
    curves = rolling_loss(tables["steps"], tables["trials"], window=10, by="arch")
    np.testing.assert_allclose(y, curves[curves["arch"] == "AlexNet"]["std"])


def test_short_curves_are_flagged(tables):
    fig = plot_loss_curves(tables["steps"], tables["trials"], window=500, trial_ids=["t0"])
    assert any("< 500 steps" in t for t in legend_texts(fig))


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (None, "steps table is missing.*hpsearch run"),
        (pd.DataFrame(columns=["trial_id", "step", "loss"]), "steps table is empty"),
        (pd.DataFrame({"trial_id": ["a"], "step": [1]}), "no column loss"),
    ],
)
def test_missing_steps_say_what_is_missing(steps, message):
    with pytest.raises(MissingDataError, match=message):
        plot_loss_curves(steps)


def test_group_column_must_exist(tables):
    with pytest.raises(MissingDataError, match="no column width"):
        rolling_loss(tables["steps"], tables["trials"], by="width")
    with pytest.raises(MissingDataError, match="trials table is missing"):
        rolling_loss(tables["steps"], by="arch")
    with pytest.raises(ValueError, match="stat must be"):
        plot_loss_curves(tables["steps"], stat="median")


def test_accuracy_curves_top_k(tables):
    fig = plot_accuracy_curves(tables["epochs"], tables["trials"], top=3)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 6  # train + validation for each of 3 trials
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "accuracy")
    texts = legend_texts(fig)
    assert texts[:3] == ["t1 AlexNet adam", "t2 FlatAlexNet sgd", "t0 AlexNet sgd"]
    assert {"train", "validation"} <= set(texts)
    assert "top 3 trials by val_accuracy" in ax.get_title()


def test_accuracy_curves_chosen_trials_and_no_trials_table(tables):
    fig = plot_accuracy_curves(tables["epochs"], trial_ids=["t3"], quantity="loss")
    assert len(fig.axes[0].get_lines()) == 2 and fig.axes[0].get_ylabel() == "loss"
    fig = plot_accuracy_curves(tables["epochs"], top=2)  # ranked from the epochs table
    assert legend_texts(fig)[:2] == ["t1", "t2"]
    with pytest.raises(MissingDataError, match="no rows for trial.*nope"):
        plot_accuracy_curves(tables["epochs"], trial_ids=["nope"])


def test_architecture_comparison(tables):
    fig = plot_architecture_comparison(
        tables["steps"], tables["epochs"], tables["trials"], window=10
    )
    ax_loss, ax_acc = fig.axes
    assert len(ax_loss.get_lines()) == 3
    assert len(ax_acc.get_lines()) == 6
    assert ax_loss.get_xlabel() == "training step (mini-batch)" and ax_acc.get_xlabel() == "epoch"
    texts = legend_texts(fig)
    assert "NarrowAlexNet (1 trial)" in texts  # the diverged t5 is left out
    assert {"train", "validation"} <= set(texts)
    # the accuracy panel is the mean over each group's trials
    y = ax_acc.get_lines()[0].get_ydata()
    ep = tables["epochs"]
    expected = ep[ep["trial_id"].isin(["t0", "t1"])].groupby("epoch")["train_accuracy"].mean()
    np.testing.assert_allclose(y, expected)


def test_comparison_of_best_trials_and_by_strides(tables):
    fig = plot_architecture_comparison(
        tables["steps"], tables["epochs"], tables["trials"], window=10, select="best"
    )
    assert "AlexNet (1 trial)" in legend_texts(fig)
    fig = plot_architecture_comparison(
        tables["steps"], tables["epochs"], tables["trials"], by="model_strides", window=10
    )
    assert len(fig.axes[0].get_lines()) == 2


def test_comparison_needs_two_groups(tables):
    one = tables["trials"][tables["trials"]["arch"] == "AlexNet"]
    with pytest.raises(MissingDataError, match=r"only one arch in this run \(AlexNet\)"):
        plot_architecture_comparison(tables["steps"], tables["epochs"], one)


def test_optimizer_comparison(tables):
    fig = plot_optimizer_comparison(tables["steps"], tables["trials"], window=10)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2
    assert "sgd (3 trials)" in legend_texts(fig)
    sgd = tables["trials"].assign(optimizer="sgd")
    with pytest.raises(MissingDataError, match="only one optimizer in this run"):
        plot_optimizer_comparison(tables["steps"], sgd)


def test_dropout_comparison(tables):
    fig = plot_dropout_comparison(tables["steps"], tables["trials"], window=10)
    ax_loss, ax_acc = fig.axes
    assert len(ax_loss.get_lines()) == 3  # p = 0, 0.25, 0.5
    assert "p = 0.25 (2 trials)" in legend_texts(fig)
    points = sum(len(c.get_offsets()) for c in ax_acc.collections)
    assert points == 5  # trials with a final accuracy; diverged and infeasible have none
    assert ax_acc.get_xlabel().startswith("dropout p") and "validation" in ax_acc.get_ylabel()
    fig = plot_dropout_comparison(tables["steps"], tables["trials"], window=10, max_groups=2)
    assert len(fig.axes) == 3  # one line per trial and a colour bar
    with pytest.raises(MissingDataError, match="only one dropout p"):
        plot_dropout_comparison(tables["steps"], tables["trials"].assign(dropout=0.1))


def test_comparison_of_a_fixed_dimension(tables):
    fixed = tables["trials"].drop(columns=["optimizer"])
    with pytest.raises(MissingDataError, match="no 'optimizer' column"):
        plot_optimizer_comparison(tables["steps"], fixed)


def test_regularization_comparison_draws_one_line_per_setting(tables):
    trials = tables["trials"].copy()
    trials["l1"] = [1e-5 if i % 2 else 0.0 for i in range(len(trials))]
    trials["weight_decay"] = 0.0
    labels = regularization_labels(trials)
    for (l1, p), label in zip(
        trials[["l1", "dropout"]].itertuples(index=False), labels, strict=True
    ):
        parts = ([f"L1 {l1:.3g}"] if l1 else []) + ([f"dropout {p:.3g}"] if p else [])
        assert label == (", ".join(parts) or "none")
    assert {"none", "L1 1e-05, dropout 0.25"} <= set(labels)
    fig = plot_regularization_comparison(tables["steps"], trials, window=10)
    curves = rolling_loss(tables["steps"], trials.assign(regularization=labels), window=10,
                          by="regularization")  # fmt: skip
    drawn = set(curves[curves.columns[0]])
    assert len(fig.axes[0].get_lines()) == len(drawn) >= 3  # each with steps gets its line
    with pytest.raises(MissingDataError, match="no l1 or weight_decay"):
        plot_regularization_comparison(tables["steps"], tables["trials"])
    same = trials.assign(l1=0.0, dropout=0.0)
    with pytest.raises(MissingDataError, match="same penalties"):
        plot_regularization_comparison(tables["steps"], same)
