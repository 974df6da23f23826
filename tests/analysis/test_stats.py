"""The k-fold comparison's statistics against the formulas written out by hand, and the
one-standard-error rule that picks the config to train."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from hpsearch.analysis import (
    MissingDataError,
    compare_configs,
    config_costs,
    corrected_ttest,
    format_recommendation,
    kfold_summary,
    mean_interval,
    read_final,
    recommend,
)
from hpsearch.rundir import TABLE_COLUMNS

# Held-out accuracy of three configs on the same 5 folds. A is the best; B lies within one
# standard error of A's mean (0.794 >= 0.800 - 0.00707); C is far below.
SCORES = {
    "A": [0.80, 0.82, 0.78, 0.81, 0.79],
    "B": [0.80, 0.81, 0.77, 0.80, 0.79],
    "C": [0.70, 0.72, 0.69, 0.71, 0.70],
}
K = 5


def _folds(scores: dict[str, list[float]] = SCORES) -> pd.DataFrame:
    rows = []
    for config, values in scores.items():
        for fold, acc in enumerate(values):
            for split, shift in (("train", 0.15), ("test", 0.0)):
                rows.append(
                    {
                        "config_id": config,
                        "trial_id": f"{config}-f{fold}",
                        "fold": fold,
                        "split": split,
                        "accuracy": acc + shift,
                        "macro_precision": acc - 0.02 * fold,
                        "loss": 1 - acc,
                        "label": f"net {config}",
                    }
                )
    return pd.DataFrame(rows)


def _hand_interval(x) -> tuple[float, float, float, float]:
    x = np.asarray(x, dtype=float)
    n = x.size
    mean, std = x.sum() / n, math.sqrt(((x - x.mean()) ** 2).sum() / (n - 1))
    sem = std / math.sqrt(n)
    half = st.t.ppf(0.975, n - 1) * sem
    return mean, sem, mean - half, mean + half


def _hand_corrected(a, b, ratio: float) -> dict[str, float]:
    """Nadeau & Bengio: var(mean d) = (1/k + n_test/n_train) * s², df = k - 1."""
    d = np.asarray(a) - np.asarray(b)
    k = d.size
    s2 = ((d - d.mean()) ** 2).sum() / (k - 1)
    se = math.sqrt((1 / k + ratio) * s2)
    t = d.mean() / se
    half = st.t.ppf(0.975, k - 1) * se
    return {
        "mean_diff": d.mean(),
        "t": t,
        "p": 2 * st.t.sf(abs(t), k - 1),
        "ci_low": d.mean() - half,
        "ci_high": d.mean() + half,
    }


def test_mean_interval_by_hand():
    mean, sem, low, high = _hand_interval(SCORES["A"])
    got = mean_interval(SCORES["A"])
    assert got["folds"] == 5
    assert got["mean"] == pytest.approx(0.80) == pytest.approx(mean)
    assert got["std"] == pytest.approx(math.sqrt(0.001 / 4))
    assert got["sem"] == pytest.approx(sem)
    assert got["ci_low"] == pytest.approx(low) and got["ci_high"] == pytest.approx(high)
    assert got["ci_high"] - got["mean"] == pytest.approx(2.776445 * sem, rel=1e-6)  # t(0.975, 4)


def test_mean_interval_of_one_fold_is_nan():
    got = mean_interval([0.7, math.nan, math.inf])
    assert got["folds"] == 1 and got["mean"] == 0.7
    assert all(math.isnan(got[k]) for k in ("std", "sem", "ci_low", "ci_high"))
    assert mean_interval([])["folds"] == 0 and math.isnan(mean_interval([])["mean"])


def test_kfold_summary_has_the_interval():
    summary = kfold_summary(_folds())
    row = summary[
        (summary["config_id"] == "C")
        & (summary["split"] == "test")
        & (summary["metric"] == "accuracy")
    ].iloc[0]
    _, sem, low, high = _hand_interval(SCORES["C"])
    assert row["sem"] == pytest.approx(sem)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))


def test_corrected_ttest_by_hand():
    got = corrected_ttest(SCORES["A"], SCORES["C"])
    want = _hand_corrected(SCORES["A"], SCORES["C"], ratio=1 / (K - 1))
    assert got["folds"] == K
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    # an explicit n_test/n_train (a hold-out split of 20 % / 80 %)
    got = corrected_ttest(SCORES["A"], SCORES["B"], test_train_ratio=0.25)
    want = _hand_corrected(SCORES["A"], SCORES["B"], ratio=0.25)
    assert got["p"] == pytest.approx(want["p"]) and got["t"] == pytest.approx(want["t"])
    got = corrected_ttest(SCORES["A"], SCORES["B"], test_train_ratio=0.1)
    assert got["ci_low"] == pytest.approx(_hand_corrected(SCORES["A"], SCORES["B"], 0.1)["ci_low"])


def test_corrected_ttest_is_less_confident_than_the_plain_paired_test():
    for a, b in (("A", "B"), ("A", "C"), ("B", "C")):
        plain = st.ttest_rel(SCORES[a], SCORES[b])
        got = corrected_ttest(SCORES[a], SCORES[b])
        assert abs(got["t"]) < abs(plain.statistic)
        assert got["p"] > plain.pvalue
        d = np.subtract(SCORES[a], SCORES[b])
        plain_half = st.t.ppf(0.975, K - 1) * d.std(ddof=1) / math.sqrt(K)
        assert got["ci_high"] - got["ci_low"] > 2 * plain_half


def test_corrected_ttest_edge_cases():
    one = corrected_ttest([0.8], [0.7])
    assert one["folds"] == 1
    assert all(math.isnan(one[k]) for k in ("mean_diff", "ci_low", "ci_high", "t", "p"))
    same = corrected_ttest([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert same["p"] == 1.0 and same["t"] == 0.0 and same["mean_diff"] == 0.0
    shifted = corrected_ttest([0.5, 0.25, 0.75], [0.25, 0.0, 0.5])  # d = 0.25 on every fold
    assert shifted["p"] == 0.0 and shifted["t"] == math.inf
    assert shifted["ci_low"] == shifted["ci_high"] == 0.25
    # non-finite values drop their pair
    a, b = [0.8, math.nan, 0.82, 0.78, 0.81], [0.79, 0.8, math.inf, 0.75, 0.8]
    got = corrected_ttest(a, b)
    want = _hand_corrected([0.8, 0.78, 0.81], [0.79, 0.75, 0.8], ratio=1 / 2)
    assert got["folds"] == 3
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    with pytest.raises(ValueError, match="paired by fold"):
        corrected_ttest([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="test_train_ratio must be > 0"):
        corrected_ttest(SCORES["A"], SCORES["B"], test_train_ratio=0)


def test_series_are_paired_by_fold():
    a = pd.Series(SCORES["A"], index=range(K))
    b = pd.Series(SCORES["C"][::-1], index=range(K)[::-1])  # same pairs, other order
    assert corrected_ttest(a, b)["p"] == pytest.approx(
        corrected_ttest(SCORES["A"], SCORES["C"])["p"]
    )
    got = corrected_ttest(a, b.drop(index=4))
    assert got["folds"] == 4
    assert got["mean_diff"] == pytest.approx(np.mean(np.subtract(SCORES["A"], SCORES["C"])[:4]))


def test_compare_configs_table():
    table = compare_configs(_folds())
    assert tuple(table.columns) == TABLE_COLUMNS["comparison"]
    assert len(table) == 3 * 2  # config x metric
    assert (table["split"] == "test").all() and (table["best_config_id"] == "A").all()
    acc = table[table["metric"] == "accuracy"].set_index("config_id")
    assert acc["rank"].to_dict() == {"A": 1, "B": 2, "C": 3}
    assert acc.loc["A", "mean_diff"] == 0 and math.isnan(acc.loc["A", "p_value"])
    assert math.isnan(acc.loc["A", "diff_ci_low"])
    for config in ("B", "C"):
        want = _hand_corrected(SCORES[config], SCORES["A"], ratio=1 / (K - 1))
        row = acc.loc[config]
        assert row["mean_diff"] == pytest.approx(want["mean_diff"])
        assert row["p_value"] == pytest.approx(want["p"])
        assert row["diff_ci_low"] == pytest.approx(want["ci_low"])
        assert row["diff_ci_high"] == pytest.approx(want["ci_high"])
        _, sem, low, high = _hand_interval(SCORES[config])  # test split: no train shift
        assert (row["sem"], row["ci_low"], row["ci_high"]) == pytest.approx((sem, low, high))
        assert row["label"] == f"net {config}" and row["folds"] == K
    prec = table[table["metric"] == "macro_precision"].set_index("config_id")
    assert prec.loc["C", "mean_diff"] == pytest.approx(np.mean(SCORES["C"]) - np.mean(SCORES["A"]))
    train = compare_configs(_folds(), split="train")
    assert train.loc[train["config_id"] == "A", "mean"].iloc[0] == pytest.approx(0.95)


def test_ties_go_to_fewer_macs_then_the_id():
    folds = _folds({"Z": SCORES["A"], "Y": SCORES["A"], "X": SCORES["C"]})
    assert compare_configs(folds)["best_config_id"].iloc[0] == "Y"  # config_id order
    costs = pd.DataFrame({"config_id": ["Z", "Y", "X"], "macs": [10, 20, 1]})
    assert compare_configs(folds, costs=costs)["best_config_id"].iloc[0] == "Z"
    with_macs = folds.assign(macs=folds["config_id"].map({"Z": 5, "Y": 6, "X": 1}))
    assert compare_configs(with_macs)["best_config_id"].iloc[0] == "Z"


def test_compare_configs_bad_input():
    with pytest.raises(MissingDataError, match="run `hpsearch kfold RUN_DIR`"):
        compare_configs(None)
    with pytest.raises(MissingDataError, match="no column macro_precision"):
        compare_configs(_folds().drop(columns="macro_precision"))
    with pytest.raises(MissingDataError, match="no 'test' rows"):
        compare_configs(_folds().query("split == 'train'"))
    doubled = pd.concat([_folds(), _folds().iloc[[1]]])
    with pytest.raises(ValueError, match="more than one row for fold 0"):
        compare_configs(doubled)


def test_one_fold_gives_nan_not_a_crash():
    table = compare_configs(_folds({c: v[:1] for c, v in SCORES.items()}))
    assert (table["folds"] == 1).all()
    assert table[["std", "sem", "ci_low", "ci_high", "diff_ci_low"]].isna().all().all()
    assert table.loc[table["config_id"] == "B", "p_value"].isna().all()
    rec = recommend(table)
    assert rec.config_id == "A" and "one fold" in rec.reason  # no SE: only the best qualifies


COSTS = pd.DataFrame(
    {
        "config_id": ["A", "B", "C"],
        "params": [2_000_000, 900_000, 100_000],
        "macs": [1_000_000_000, 400_000_000, 50_000_000],
        "images_per_s": [900.0, 2100.0, 8000.0],
    }
)


def test_one_se_rule_picks_the_cheaper_config_within_one_se():
    table = compare_configs(_folds())
    rec = recommend(table, COSTS)
    sem_a = mean_interval(SCORES["A"])["sem"]
    assert np.mean(SCORES["B"]) >= 0.80 - sem_a > np.mean(SCORES["C"])  # the fixture's premise
    assert rec.config_id == "B" and rec.best_config_id == "A"
    assert rec.candidates == ("B", "A")  # cheapest first; C is outside
    assert rec.mean == pytest.approx(0.794) and rec.sem == pytest.approx(sem_a)
    assert rec.ci_low == pytest.approx(_hand_interval(SCORES["B"])[2])
    assert (rec.params, rec.macs, rec.images_per_s) == (900_000, 400_000_000, 2100.0)
    assert rec.reason == (
        f"fewest MACs among the 2 configs within one standard error ({sem_a:.3f}) of the "
        "best's mean accuracy 0.800"
    )


def test_one_se_rule_picks_the_best_when_nothing_is_within():
    table = compare_configs(_folds({"A": SCORES["A"], "C": SCORES["C"]}))
    rec = recommend(table, COSTS)  # C is far cheaper, but far worse
    assert rec.config_id == "A" and rec.candidates == ("A",)
    assert "no other config is within one standard error" in rec.reason


def test_one_se_rule_tie_breaks_and_unknown_costs():
    table = compare_configs(_folds())
    same_macs = COSTS.assign(macs=7, params=[5, 5, 1])
    assert recommend(table, same_macs).config_id == "A"  # same MACs and params: higher mean
    assert recommend(table, same_macs.assign(params=[5, 4, 1])).config_id == "B"
    rec = recommend(table)  # no costs at all: the best mean of the candidates
    assert rec.config_id == "A" and "costs unknown" in rec.reason and math.isnan(rec.macs)
    with pytest.raises(MissingDataError, match="no column config_id"):
        recommend(table, COSTS.drop(columns="config_id"))
    with pytest.raises(MissingDataError, match="no column sem"):
        recommend(table.drop(columns="sem"))
    with pytest.raises(MissingDataError, match="no 'loss' rows"):
        recommend(table, COSTS, metric="loss")


def test_config_costs_from_the_run_tables(tables):
    costs = config_costs(tables["trials"].assign(macs=lambda d: d["params"] * 50), tables["epochs"])
    row = costs.set_index("config_id").loc["t1"]
    assert (row["params"], row["macs"], row["images_per_s"]) == (2000, 100_000, 100.0)
    assert math.isnan(costs.set_index("config_id").loc["t6", "images_per_s"])  # no epoch
    bare = config_costs(tables["trials"][["trial_id"]])
    assert list(bare.columns) == ["config_id", "params", "macs", "images_per_s"]
    assert bare[["params", "macs", "images_per_s"]].isna().all().all()


def _write_final(path, rows) -> None:
    pd.DataFrame(
        rows, columns=["evaluation", "config_id", "trial_id", "accuracy", "macro_precision"]
    ).to_parquet(path / "final.parquet", index=False)


def test_read_final(tmp_path):
    assert read_final(tmp_path) is None
    _write_final(tmp_path, [(1, "B", "f1", 0.79, 0.77)])
    first = read_final(tmp_path)
    assert (first.evaluation, first.config_id, first.accuracy) == (1, "B", 0.79)
    assert first.warning is None
    _write_final(tmp_path, [(2, "A", "f2", 0.81, 0.8), (1, "B", "f1", 0.79, 0.77)])
    latest = read_final(tmp_path)
    assert (latest.evaluation, latest.config_id, latest.trial_id) == (2, "A", "f2")
    assert latest.warning.startswith(
        "the test part has been used 2 times: this figure is no longer an unbiased estimate"
    )
    pd.DataFrame({"evaluation": [1], "accuracy": [0.8]}).to_parquet(tmp_path / "final.parquet")
    with pytest.raises(MissingDataError, match="no column config_id, trial_id, macro_precision"):
        read_final(tmp_path)


def test_format_recommendation(tmp_path):
    table = compare_configs(_folds())
    rec = recommend(table, COSTS)
    text = format_recommendation(rec, table)
    lines = text.splitlines()
    assert lines[0] == "Which CNN to train"
    assert lines[1] == "  train B (net B)"
    assert f"95 % interval {rec.ci_low:.3f} to {rec.ci_high:.3f}" in text
    assert "cost: 900 k parameters, 400 M MACs per image, 2,100 training images/s" in text
    assert "test part: not used yet" in text and "WARNING" not in text
    p_c = table.loc[(table["config_id"] == "C") & (table["metric"] == "accuracy"), "p_value"]
    assert f"{p_c.iloc[0]:.2g}" in text and "corrected resampled t-test" in text
    _write_final(tmp_path, [(1, "B", "f1", 0.79, 0.77), (2, "B", "f2", 0.785, 0.77)])
    text = format_recommendation(rec, table, final=read_final(tmp_path), top=2)
    assert "test part: accuracy 0.785, macro precision 0.770 (config B, evaluation 2)" in text
    assert "WARNING: the test part has been used 2 times" in text
    assert " C " not in text.split("t-test")[-1]  # top=2: only A and B in the table
