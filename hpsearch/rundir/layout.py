"""The run-directory format, in one place: what `hpsearch run`/`resume`/`kfold` write and
analysis reads (file names, table columns and dtypes, metrics and which way is better)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

# Files and folders of a run directory.
EXPERIMENT_FILE = "experiment.yaml"  # the resolved experiment
VERSIONS_FILE = "versions.json"  # library versions and git revision
OPTUNA_DB = "optuna.db"  # the Optuna study (SQLite)
INIT_FILE = "init_weights.pt"  # train.same_init's shared initial weights
KFOLD_DIR = "kfold"  # the k-fold Tune experiment
KFOLD_SPEC = "kfold.json"  # in KFOLD_DIR: k, epochs and the configs
REPORT_DIR = "report"  # `hpsearch report`'s default output
TRIAL_PREFIX = "trial_"  # trial folders: trial_<trial_id>
# Ray Tune's files that the export reads.
TUNE_STATE_GLOB = "experiment_state-*.json"
TUNER_FILE = "tuner.pkl"
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"
PREDICTIONS_NPZ = "predictions.npz"  # a k-fold trial's out-of-sample class probabilities

TABLES = (
    "trials",
    "epochs",
    "steps",
    "confusion",
    "folds",
    "comparison",
    "final",
    "final_classes",
    "final_confusion",
    "predictions",
    "audit",
)
TRIALS_FILE = "trials.parquet"
# The trials table's config columns that the report shows, in its order: one per search
# dimension (its `Dimension.report`; tests/search/test_dimensions.py keeps the two in step).
CONFIG_REPORT_COLUMNS = (
    "arch", "pretrained", "freeze", "backbone_lr_scale", "width", "model_strides",
    "model_kernels", "dropout", "batchnorm", "batch_size", "l1", "mlp", "seed", "optimizer",
    "lr", "momentum", "weight_decay",
)  # fmt: skip
EPOCHS_FILE = "epochs.parquet"
STEPS_FILE = "steps.parquet"
CONFUSION_FILE = "confusion.parquet"
FOLDS_FILE = "folds.parquet"
COMPARISON_FILE = "comparison.parquet"
FINAL_FILE = "final.parquet"  # `hpsearch final`: one row per use of the held-out test part
FINAL_CLASSES_FILE = "final_classes.parquet"
FINAL_CONFUSION_FILE = "final_confusion.parquet"
PREDICTIONS_FILE = "predictions.parquet"  # `hpsearch kfold`: out-of-sample class probabilities
AUDIT_FILE = "audit.parquet"  # `hpsearch audit`: one row per finding
AUDIT_DIR = "audit"  # `hpsearch audit`'s suggestion files and thumbnails:
AUDIT_EXCLUDE = "exclude.csv"  # in AUDIT_DIR: path (the near-copies to leave out)
AUDIT_RELABEL = "relabel.csv"  # in AUDIT_DIR: path, class (the likely wrong labels)
AUDIT_LOOKALIKES = "lookalikes.csv"  # in AUDIT_DIR: class_a, class_b, score, merge
AUDIT_THUMBNAILS = "thumbnails.npz"  # in AUDIT_DIR: paths [M], images uint8 [M, H, W, 3]
FINAL_DIR = "final"  # the final model's weights: final/model-<evaluation>.pt


# A run or study name: one path component of letters, digits, '_', '.', '-', starting with a
# letter or digit (so never '.', '..', hidden, or a path).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def check_name(value: str, what: str) -> str:
    """`value` if it is a safe run name, else ValueError saying what to change."""

    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value) or len(value) > 200:
        raise ValueError(
            f"{what} {value!r} must be one folder name: letters, digits, '_', '.' and '-', "
            "starting with a letter or digit (no '/', '..' or leading dot), e.g. demo-2"
        )
    return value


def check_component(value: str, what: str) -> str:
    """`value` if it can be one file or folder name (a class name), else ValueError."""
    bad = (
        not isinstance(value, str)
        or value in ("", ".", "..")
        or value.startswith(".")
        or "/" in value
        or "\\" in value
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    )
    if bad:
        raise ValueError(
            f"{what} {value!r} must be usable as one folder name: no '/' or '\\', not '.' or "
            "'..', no leading dot and no control characters"
        )
    return value


def runs_inside(folder: Path, marker: str, *, most: int = 5) -> str:
    """The run directories directly inside `folder` (those holding `marker`), listed for an
    error message that asks for one of them; "" when there are none."""
    runs = sorted(p.parent.name for p in Path(folder).glob(f"*/{marker}"))
    listed = ", ".join(str(Path(folder) / r) for r in runs[:most])
    return listed + (" ..." if len(runs) > most else "")


def table_file(table: str) -> str:
    """The file of one of TABLES."""
    return f"{table}.parquet"


# Where each table comes from, for messages that say how to get it.
TABLE_SOURCES = {
    "trials": "trials.parquet, written by `hpsearch run` and `hpsearch resume`",
    "epochs": "epochs.parquet, written by `hpsearch run` and `hpsearch resume`",
    "steps": "steps.parquet, written by `hpsearch run` and `hpsearch resume`",
    "confusion": "confusion.parquet, written by `hpsearch run` and `hpsearch resume`",
    "folds": "folds.parquet, written by `hpsearch kfold RUN_DIR`",
    "comparison": "comparison.parquet, written by `hpsearch kfold RUN_DIR`",
    "final": "final.parquet, written by `hpsearch final RUN_DIR`",
    "final_classes": "final_classes.parquet, written by `hpsearch final RUN_DIR`",
    "final_confusion": "final_confusion.parquet, written by `hpsearch final RUN_DIR`",
    "predictions": "predictions.parquet, written by `hpsearch kfold RUN_DIR`",
    "audit": "audit.parquet, written by `hpsearch audit RUN_DIR`",
}

# The metrics a search can optimise, and the per-epoch columns of epochs.parquet.
METRICS = ("val_accuracy", "val_macro_precision", "val_loss", "train_loss", "train_accuracy")
METRIC_COLUMNS = (
    "train_loss",
    "train_accuracy",
    "train_macro_precision",
    "val_loss",
    "val_accuracy",
    "val_macro_precision",
)

_STR, _INT, _FLOAT = "str", "int64", "float64"  # "str": the text dtype of this pandas
_BOOL = "bool"
_LIST = "object"  # a list per row (Parquet's list type)
# Each table's fixed columns (present even when the table is empty), with their dtypes.
TABLE_DTYPES: dict[str, dict[str, str]] = {
    "trials": {"trial_id": _STR, "status": _STR, "error": _STR},
    "epochs": {
        "trial_id": _STR,
        "epoch": _INT,
        **dict.fromkeys(METRIC_COLUMNS, _FLOAT),
        "seconds": _FLOAT,
        "images_per_s": _FLOAT,
    },
    "steps": {"trial_id": _STR, "step": _INT, "epoch": _INT, "loss": _FLOAT},
    "confusion": {
        "trial_id": _STR,
        "epoch": _INT,
        "true_label": _INT,
        "pred_label": _INT,
        "true_class": _STR,
        "pred_class": _STR,
        "count": _INT,
    },
    "folds": {
        "config_id": _STR,
        "trial_id": _STR,
        "fold": _INT,
        "split": _STR,
        "accuracy": _FLOAT,
        "macro_precision": _FLOAT,
        "loss": _FLOAT,
        "arch": _STR,
        "label": _STR,
        "epochs": _INT,
    },
    # One row per config and metric on the held-out folds: the mean with its t interval, and
    # the difference to the best config with the corrected resampled t-test (analysis.stats).
    "comparison": {
        "config_id": _STR,
        "label": _STR,
        "metric": _STR,
        "split": _STR,
        "folds": _INT,
        "mean": _FLOAT,
        "std": _FLOAT,
        "sem": _FLOAT,
        "ci_low": _FLOAT,
        "ci_high": _FLOAT,
        "best_config_id": _STR,
        "mean_diff": _FLOAT,
        "diff_ci_low": _FLOAT,
        "diff_ci_high": _FLOAT,
        "p_value": _FLOAT,
        "rank": _INT,
    },
    # `hpsearch final`: the chosen config trained on train + validation, evaluated on the test
    # part. `evaluation` counts the uses of the test part (1 = the first, unbiased one).
    "final": {
        "evaluation": _INT,
        "config_id": _STR,
        "trial_id": _STR,
        "label": _STR,
        "accuracy": _FLOAT,
        "macro_precision": _FLOAT,
        "loss": _FLOAT,
        "epochs": _INT,
        "train_images": _INT,
        "test_images": _INT,
        "seconds": _FLOAT,
        "evaluated_at": _STR,
    },
    "final_classes": {
        "evaluation": _INT,
        "class_name": _STR,
        "precision": _FLOAT,
        "recall": _FLOAT,
        "support": _INT,
    },
    "final_confusion": {
        "evaluation": _INT,
        "true_label": _INT,
        "pred_label": _INT,
        "true_class": _STR,
        "pred_class": _STR,
        "count": _INT,
    },
    # `hpsearch kfold`: each image's out-of-sample class probabilities from a k-fold model of
    # each compared config: the images of its held-out fold, and the test part (predicted by
    # every fold's model; never used for selection). `probs` is in the classes' order.
    "predictions": {
        "config_id": _STR,
        "fold": _INT,
        "path": _STR,
        "part": _STR,
        "label": _INT,
        "class_name": _STR,
        "probs": _LIST,
    },
    # `hpsearch audit`: one row per finding. issue: label (a likely wrong label), duplicate
    # (a near-copy in the same class and part), leak (a near-copy in another part), conflict
    # (a near-copy filed under another class), lookalike (a pair of classes confused both ways:
    # given and suggested are the two classes, path is empty). score: higher is surer.
    "audit": {
        "path": _STR,
        "issue": _STR,
        "score": _FLOAT,
        "given": _STR,
        "suggested": _STR,
        "duplicate_of": _STR,
        "part": _STR,
        "duplicate_part": _STR,
    },
}
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {t: tuple(d) for t, d in TABLE_DTYPES.items()}
# Columns a table has once it has rows (besides the trials' config and model_* columns).
OPTIONAL_DTYPES: dict[str, dict[str, str]] = {
    "trials": {
        "params": _INT,
        "macs": _INT,
        "epochs": _INT,
        **{f"{kind}_{m}": _FLOAT for m in METRIC_COLUMNS for kind in ("final", "best")},
        "seconds": _FLOAT,
        "start_timestamp": _INT,
        "end_timestamp": _INT,
        # On the Pareto front of best_<search.metric> against MACs per image (`pareto`) and
        # against parameters (`pareto_params`): no other trial is as cheap and as good and
        # better in one (identical trials are both on it); False without a value or a cost.
        "pareto": _BOOL,
        "pareto_params": _BOOL,
    },
    "epochs": {"time_total_s": _FLOAT, "timestamp": _INT},
}
# The trials table's Pareto columns, by the cost they are against (`models.cost`'s names).
PARETO_COLUMNS = {"macs": "pareto", "params": "pareto_params"}


def empty_frame(table: str) -> pd.DataFrame:
    """A table without rows: its fixed columns, typed."""
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in TABLE_DTYPES[table].items()})


def _numeric(values: pd.Series, dtype: str) -> pd.Series:
    try:
        num = pd.to_numeric(values)
    except (ValueError, TypeError):
        return values  # not numbers: leave as written rather than guess
    # Integers only when every value is one (missing values need float, as pandas does).
    if dtype == _INT and num.notna().all() and (num == num.round()).all():
        return num.astype(_INT)
    return num.astype(_FLOAT)


def coerce(df: pd.DataFrame, table: str) -> pd.DataFrame:
    """`df` with its known numeric columns in the layout's dtypes (all-None -> NaN, not
    object); text columns are left alone (None stays None)."""
    dtypes = {**OPTIONAL_DTYPES.get(table, {}), **TABLE_DTYPES[table]}
    out = df.copy()
    for col, dtype in dtypes.items():
        if col not in out or dtype == _STR:
            continue
        if dtype == _BOOL:  # a flag: missing reads False
            out[col] = out[col].astype(object).where(out[col].notna(), False).astype(bool)
        else:
            out[col] = _numeric(out[col], dtype)
    return out


def metric_mode(metric: str) -> str:
    """Losses are minimised, everything else maximised."""
    return "min" if metric.endswith("loss") else "max"


def check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


def best_column(metric: str) -> str:
    """The trials column with each trial's best epoch by `metric`."""
    return f"best_{metric}"


def best_value(values: Iterable[float | None], metric: str) -> float | None:
    """The best finite value by `metric`'s mode; None when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return min(finite) if metric_mode(metric) == "min" else max(finite)


def rank_trials(trials: pd.DataFrame, metric: str, mode: str | None = None) -> pd.DataFrame:
    """Trials with a best_<metric>, best first (ties keep the table's order)."""
    col = best_column(metric)
    mode = check_mode(mode or metric_mode(metric))
    ranked = trials[trials[col].notna()]
    return ranked.sort_values(col, ascending=mode == "min", kind="stable")
