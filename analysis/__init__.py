"""Analysis of a run directory: Parquet tables in, DataFrames and figures out.

`load_run("runs/x")` reads the tables; every plot is a function of those DataFrames that
returns a matplotlib Figure; `write_report` renders them all into RUN_DIR/report/. Reads only
files (pandas, matplotlib, Optuna for the study): never Ray or torch.
"""

from analysis._common import MissingDataError, top_trials
from analysis.compare import (
    group_trials,
    plot_architecture_comparison,
    plot_dropout_comparison,
    plot_optimizer_comparison,
)
from analysis.confusion import (
    confused_pairs,
    confusion_matrix,
    merge_suggestions,
    plot_confusion_matrix,
)
from analysis.curves import plot_accuracy_curves, plot_loss_curves, rolling_loss
from analysis.kfold import box_stats, format_kfold_summary, kfold_summary, plot_kfold
from analysis.progress import (
    best_so_far,
    param_importances,
    plot_param_importances,
    plot_search_progress,
)
from analysis.report import ReportResult, format_report_result, write_report
from analysis.run import Run, latest_run, load_run

__all__ = [
    "MissingDataError",
    "ReportResult",
    "Run",
    "best_so_far",
    "box_stats",
    "confused_pairs",
    "confusion_matrix",
    "format_kfold_summary",
    "format_report_result",
    "group_trials",
    "kfold_summary",
    "latest_run",
    "load_run",
    "merge_suggestions",
    "param_importances",
    "plot_accuracy_curves",
    "plot_architecture_comparison",
    "plot_confusion_matrix",
    "plot_dropout_comparison",
    "plot_kfold",
    "plot_loss_curves",
    "plot_optimizer_comparison",
    "plot_param_importances",
    "plot_search_progress",
    "rolling_loss",
    "top_trials",
    "write_report",
]
