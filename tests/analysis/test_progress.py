from __future__ import annotations

import numpy as np
import pytest

from hpsearch.analysis import (
    MissingDataError,
    best_so_far,
    plot_param_importances,
    plot_search_progress,
)


def test_best_so_far_max(tables):
    df = best_so_far(tables["trials"])
    assert df["trial_id"].tolist() == [f"t{i}" for i in range(7)]
    assert df["trial_number"].tolist() == list(range(1, 8))
    np.testing.assert_allclose(df["best"], [0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8])
    assert np.isnan(df["value"].iloc[5])
    assert df["elapsed_s"].iloc[0] == 20  # t0 ran 4 epochs of 5 s from the search's start
    assert df["best_by_time"].iloc[-1] == pytest.approx(0.8)


def test_best_so_far_min_for_losses(tables):
    df = best_so_far(tables["trials"], metric="val_loss")
    np.testing.assert_allclose(df["best"].iloc[:5], [0.3, 0.2, 0.2, 0.2, 0.2])
    t = tables["trials"].assign(best_val_loss=[0.5, 0.6, 0.4, 0.45, 0.3, None, None])
    assert best_so_far(t, metric="val_loss")["best"].iloc[:5].tolist() == pytest.approx(
        [0.5, 0.5, 0.4, 0.4, 0.3]
    )


def test_wall_clock_from_epochs_when_trials_lack_timestamps(tables):
    trials = tables["trials"].drop(columns=["start_timestamp", "end_timestamp"])
    df = best_so_far(trials, tables["epochs"])
    assert df["elapsed_s"].iloc[0] == 20 and np.isnan(df["elapsed_s"].iloc[6])


def test_progress_plot(tables):
    fig = plot_search_progress(tables["trials"], tables["epochs"])
    ax_n, ax_t = fig.axes
    assert ax_n.get_xlabel().startswith("trial number")
    assert ax_t.get_xlabel().startswith("wall-clock minutes")
    assert "validation accuracy" in ax_n.get_ylabel()
    step = ax_n.get_lines()[0]
    np.testing.assert_allclose(step.get_ydata(), [0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "best so far" and "completed" in legend and "stopped" in legend
    assert any(t.startswith("no value") for t in legend)
    assert "highest" in fig.get_suptitle()
    fig = plot_search_progress(tables["trials"], metric="val_loss", mode="min")
    assert "lowest" in fig.get_suptitle()


def test_progress_needs_values(tables):
    with pytest.raises(MissingDataError, match="no trial has a val_accuracy yet"):
        plot_search_progress(tables["trials"].assign(best_val_accuracy=np.nan))


def test_importance_bars():
    fig = plot_param_importances({"lr": 0.2, "dropout": 0.7, "arch": 0.1})
    (ax,) = fig.axes
    assert len(ax.patches) == 3
    names = [t.get_text() for t in ax.get_yticklabels()]
    ticks = sorted(zip(ax.get_yticks(), names, strict=True))
    assert [name for _, name in ticks] == ["arch", "lr", "dropout"]  # largest on top
    assert "importance" in ax.get_xlabel()
    with pytest.raises(MissingDataError, match="nothing to plot"):
        plot_param_importances({})
