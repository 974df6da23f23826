"""Analysis of a run directory: Parquet tables in, DataFrames and figures out.

`load_run("runs/x")` reads the tables; every plot is a function of those DataFrames that
returns a matplotlib Figure; `recommend_run` answers "which CNN to train" from the k-fold
comparison; `write_report` renders them all into RUN_DIR/report/. Reads only files (pandas,
scipy, matplotlib, Optuna for the study): never Ray or torch.
"""

from hpsearch.analysis._common import MissingDataError, top_trials
from hpsearch.analysis.audit import (
    audit_table,
    confident_learning,
    format_audit,
    out_of_sample,
    plot_audit_images,
)
from hpsearch.analysis.compare import (
    group_trials,
    plot_architecture_comparison,
    plot_dropout_comparison,
    plot_optimizer_comparison,
    plot_regularization_comparison,
    regularization_labels,
)
from hpsearch.analysis.confusion import (
    confused_pairs,
    confusion_matrix,
    merge_suggestions,
    plot_confusion_matrix,
)
from hpsearch.analysis.curves import plot_accuracy_curves, plot_loss_curves, rolling_loss
from hpsearch.analysis.kfold import box_stats, format_kfold_summary, kfold_summary, plot_kfold
from hpsearch.analysis.pareto import front_table, pareto_front, plot_pareto
from hpsearch.analysis.progress import (
    best_so_far,
    param_importances,
    plot_param_importances,
    plot_search_progress,
)
from hpsearch.analysis.report import ReportResult, format_report_result, write_report
from hpsearch.analysis.run import Run, latest_run, load_run
from hpsearch.analysis.stats import (
    Answer,
    FinalEvaluation,
    Recommendation,
    compare_configs,
    config_costs,
    corrected_ttest,
    format_recommendation,
    mean_interval,
    read_final,
    recommend,
    recommend_run,
)

__all__ = [
    "Answer",
    "FinalEvaluation",
    "MissingDataError",
    "Recommendation",
    "ReportResult",
    "Run",
    "audit_table",
    "best_so_far",
    "box_stats",
    "compare_configs",
    "config_costs",
    "confident_learning",
    "confused_pairs",
    "confusion_matrix",
    "corrected_ttest",
    "format_audit",
    "format_kfold_summary",
    "format_recommendation",
    "format_report_result",
    "front_table",
    "group_trials",
    "kfold_summary",
    "latest_run",
    "load_run",
    "mean_interval",
    "out_of_sample",
    "merge_suggestions",
    "param_importances",
    "pareto_front",
    "plot_audit_images",
    "plot_accuracy_curves",
    "plot_architecture_comparison",
    "plot_confusion_matrix",
    "plot_dropout_comparison",
    "plot_kfold",
    "plot_loss_curves",
    "plot_optimizer_comparison",
    "plot_param_importances",
    "plot_pareto",
    "plot_regularization_comparison",
    "plot_search_progress",
    "read_final",
    "recommend",
    "recommend_run",
    "regularization_labels",
    "rolling_loss",
    "top_trials",
    "write_report",
]
