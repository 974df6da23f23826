"""`hpsearch report RUN_DIR`: the answer to "which CNN to train" first, then every plot the run's
data supports as PNG, the top trials as CSV and HTML, and one self-contained index.html (images
embedded) that still works when the report folder is copied elsewhere. Plots the data does not
support are listed with the reason."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from hpsearch.analysis._common import MissingDataError, pretty, require
from hpsearch.analysis.audit import (
    CONFLICT,
    DUPLICATE,
    LABEL,
    LEAK,
    LOOKALIKE,
    plot_audit_images,
)
from hpsearch.analysis.compare import (
    group_trials,
    plot_architecture_comparison,
    plot_dropout_comparison,
    plot_optimizer_comparison,
    plot_regularization_comparison,
)
from hpsearch.analysis.confusion import confused_pairs, merge_suggestions, plot_confusion_matrix
from hpsearch.analysis.curves import plot_accuracy_curves, plot_loss_curves
from hpsearch.analysis.kfold import kfold_summary, plot_kfold
from hpsearch.analysis.pareto import front_table, plot_pareto
from hpsearch.analysis.progress import (
    param_importances,
    plot_param_importances,
    plot_search_progress,
)
from hpsearch.analysis.run import Run, load_run
from hpsearch.analysis.stats import (
    Answer,
    Recommendation,
    compare_configs,
    config_costs,
    cost_text,
    final_text,
    interval_text,
    recommend_run,
)
from hpsearch.rundir import CONFIG_REPORT_COLUMNS, REPORT_DIR, atomic_write, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The top-trials table: each search dimension's report column, in the table's order.
SHOWN_COLUMNS = ["trial_id", "status", *CONFIG_REPORT_COLUMNS, "epochs"]
ANSWER_TITLE = "Which CNN to train"
ANSWER_COLUMNS = (
    "rank", "config_id", "label", "one_se_rule", "metric", "folds", "mean", "ci_low", "ci_high",
    "mean_diff", "diff_ci_low", "diff_ci_high", "p_value", "params", "macs", "images_per_s",
)  # fmt: skip
ANSWER_CAPTION = (
    "mean, ci_low, ci_high: the mean over the held-out folds and its 95 % t interval. "
    "mean_diff: the config's mean minus the best's on the same folds; diff_ci_low, diff_ci_high "
    "and p_value come from the corrected resampled t-test (Nadeau & Bengio 2003), which allows "
    "for the overlap of the folds' training sets: a p-value above 0.05 means the folds cannot "
    "tell the config from the best. The recommendation is the one-standard-error rule: the "
    "fewest MACs among the configs whose mean lies within one standard error of the best's."
)
TABLE_FILES = (
    "top_trials.csv", "top_trials.html", "kfold_summary.csv", "confused_pairs.csv", "audit.csv",
    "pareto_front.csv",
)  # fmt: skip


@dataclass
class ReportResult:
    """What `write_report` did: `plots` maps each plot's title to its PNG, `skipped` and
    `failed` map titles to the reason (failed: an unexpected error, worth reporting)."""

    out_dir: Path
    index_html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    recommendation: Recommendation | None = None  # the answer's config, when the run has folds

    @property
    def written(self) -> list[Path]:
        return [*self.plots.values(), *self.tables.values(), self.index_html]


@dataclass
class _Section:
    slug: str  # the PNG's name and the page anchor
    title: str
    caption: str
    draw: Callable[[], Figure]


def _sections(run: Run, *, window: int) -> list[_Section]:
    metric, mode, trials, steps, epochs = run.metric, run.mode, run.trials, run.steps, run.epochs
    w = f"{window}-step"

    def progress() -> Figure:
        return plot_search_progress(trials, epochs, metric=metric, mode=mode)

    def pareto() -> Figure:
        return plot_pareto(trials, _comparison(run), metric=metric, mode=mode)

    def importances() -> Figure:
        try:
            study = run.study()
        except FileNotFoundError as e:
            raise MissingDataError("parameter importances", str(e)) from e
        return plot_param_importances(param_importances(study))

    def architectures() -> Figure:
        return plot_architecture_comparison(
            steps, epochs, trials, window=window, metric=metric, mode=mode
        )

    def loss_std() -> Figure:
        group_trials(trials, "arch", what="the loss spread by architecture")
        return plot_loss_curves(steps, trials, by="arch", stat="std", window=window)

    def top_losses() -> Figure:
        ids = run.top_trials(5)["trial_id"].tolist() if run.best_trial_id else None
        return plot_loss_curves(steps, trials, trial_ids=ids, window=window)

    def top_accuracy() -> Figure:
        return plot_accuracy_curves(epochs, trials, top=5, metric=metric, mode=mode)

    def confusion() -> Figure:
        return plot_confusion_matrix(run.confusion, _confusion_id(run))

    def variants(col: str, noun: str) -> Figure:
        """Trials of one preset (the one run with the most variants) grouped by `col`."""
        what = f"the {noun} comparison"
        subset, arch = require(trials, "trials", ["trial_id", col], what=what), ""
        if "arch" in trials:
            counts = trials.groupby("arch")[col].nunique()
            if counts.empty or counts.max() < 2:
                raise MissingDataError(
                    what, f"no preset ran with different {noun}s; search `{noun}s` to study them"
                )
            arch = str(counts.idxmax())
            subset = trials[trials["arch"] == arch]
        title = f"{arch + ': ' if arch else ''}{noun} variants (mean over the trials of each)"
        return plot_architecture_comparison(
            steps, epochs, subset, by=col, window=window, metric=metric, mode=mode, title=title
        )

    def optimizers() -> Figure:
        return plot_optimizer_comparison(steps, trials, window=window, metric=metric, mode=mode)

    def dropout() -> Figure:
        return plot_dropout_comparison(steps, trials, window=window)

    def regularization() -> Figure:
        return plot_regularization_comparison(steps, trials, window=window)

    def kfold() -> Figure:
        return plot_kfold(run.folds)

    def audit(issue: str) -> Figure:
        return plot_audit_images(run.audit, run.audit_thumbnails(), issue=issue)

    def batchnorm() -> Figure:
        return plot_architecture_comparison(
            steps,
            epochs,
            trials,
            by="model_batchnorm",
            window=window,
            metric=metric,
            mode=mode,
            title="Batch norm after each conv: off / on (mean over the trials of each)",
        )

    table = [
        ("search_progress", "Search progress", progress,
         f"Best {pretty(metric)} so far ({mode}) by trial number and wall-clock time; "
         "dots are single trials (their best epoch)."),
        ("pareto", "Accuracy against cost", pareto,
         f"Each trial's best {pretty(metric)} against its MACs per image (left) and its "
         "parameters (right), log scale. The step line is the Pareto front: no other trial is "
         "as cheap and as good; read it at your deployment budget (\"the best CNN under "
         "300 M MACs\"). After `hpsearch kfold`, red diamonds: each compared config's mean "
         "held-out score and its 95 % t interval, at its trial's cost."),
        ("param_importances", "Parameter importances", importances,
         "How much each searched parameter explains the objective (Optuna, fANOVA)."),
        ("architectures", "Architectures compared", architectures,
         f"Mean over the trials of each preset: training loss ({w} rolling mean) and "
         "train/validation accuracy per epoch."),
        ("architectures_loss_std", "Training-loss spread by architecture", loss_std,
         f"Rolling standard deviation ({w} window) of each preset's mean training loss."),
        ("loss_top_trials", "Training loss of the top trials", top_losses,
         f"{w} rolling mean of the training loss of the 5 best trials by {metric}."),
        ("accuracy_top_trials", "Train vs validation accuracy of the top trials", top_accuracy,
         "Solid: training set, dashed: validation set."),
        ("confusion_best", "Confusion matrix of the best trial", confusion,
         "Rows are true classes and sum to 1; the last evaluation of the best trial with one."),
        ("strides", "Stride variants compared", lambda: variants("model_strides", "stride"),
         "Trials of one preset grouped by the strides of their conv layers."),
        ("kernels", "Kernel-size variants compared", lambda: variants("model_kernels", "kernel"),
         "Trials of one preset grouped by the kernel sizes of their conv layers."),
        ("optimizers", "Optimizers compared", optimizers,
         f"Mean training loss ({w} rolling mean) over the trials of each optimizer."),
        ("dropout", "Dropout compared", dropout,
         "Training loss by dropout p, and each trial's final validation accuracy against p "
         "(hollow: stopped early)."),
        ("regularization", "Regularization compared", regularization,
         f"Mean training loss ({w} rolling mean) per setting of the L1 penalty (`l1`), the L2 "
         "penalty (the optimizer's weight decay) and dropout p."),
        ("batchnorm", "Batch norm compared", batchnorm,
         f"Training loss ({w} rolling mean) and train/validation accuracy per epoch, with and "
         "without batch norm."),
        ("kfold", "K-fold error estimates", kfold,
         "Scores over the folds per config; median and IQR above each box, whiskers at "
         "1.5 IQR."),
        ("audit_labels", "Audit: likely wrong labels", lambda: audit(LABEL),
         "The images whose given class the k-fold models, which never trained on them, find "
         "least likely (confident learning): given class -> suggested class, and the score "
         "(1 - the probability of the given class). Surest first."),
        ("audit_copies", "Audit: near-duplicates", lambda: audit(CONFLICT),
         "Near-copies (perceptual hash and thumbnail correlation) filed under another class, "
         "left; the image each copies, right."),
        ("audit_leaks", "Audit: near-duplicates across the parts", lambda: audit(LEAK),
         "Near-copies in another part than the image they copy (train, validation, test): "
         "a test image with a copy in the training part flatters the test score."),
        ("audit_duplicates", "Audit: near-duplicates in the same class and part",
         lambda: audit(DUPLICATE),
         "Repeated images: they weigh twice in training and in the scores."),
    ]  # fmt: skip
    sections = [_Section(slug, title, caption, draw) for slug, title, draw, caption in table]
    if run.audit is None:  # one line among the skipped plots says how to get them
        sections = [s for s in sections if not s.slug.startswith("audit_")]
    return sections


def _comparison(run: Run) -> pd.DataFrame | None:
    """The k-fold comparison (as comparison.parquet holds it), or None before `kfold`."""
    if run.folds is None:
        return None
    try:
        return compare_configs(run.folds, costs=config_costs(run.trials, run.epochs))
    except MissingDataError:
        return None


def _confusion_id(run: Run) -> str | None:
    """The best trial that has a confusion matrix."""
    have = set(run.confusion["trial_id"]) if "trial_id" in run.confusion else set()
    if not have:
        raise MissingDataError("the confusion matrix", "confusion.parquet is empty or missing")
    if run.best_trial_id is None:
        return sorted(have)[0]
    ranked = run.top_trials(len(run.trials))["trial_id"]
    return next((t for t in ranked if t in have), sorted(have)[0])


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(
        index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}", classes="table"
    )


def _top_table(run: Run, top: int) -> pd.DataFrame:
    ranked = run.top_trials(top)
    metric_cols = [f"best_{run.metric}", f"final_{run.metric}"]
    shown = [c for c in SHOWN_COLUMNS if c in ranked] + [
        c for c in [*metric_cols, "params", "macs", "seconds"] if c in ranked
    ]
    return ranked[shown]


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
img{max-width:100%;border:1px solid #ddd}
.table{border-collapse:collapse;font-size:13px;margin:.5em 0}
.table td,.table th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
.meta,.caption{color:#555}.skip li{margin:.3em 0}.warn{color:#a00;font-weight:bold}
nav a{margin-right:1em}
"""


def write_report(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    top: int = 10,
    window: int = 50,
    dpi: int = 110,
) -> ReportResult:
    """Write the report of a run into `out` (default RUN_DIR/report/) and say what it holds."""
    run = load_run(run_dir)
    out_dir = Path(out) if out is not None else run.path / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out_dir=out_dir, index_html=out_dir / "index.html")
    sections = _sections(run, window=window)
    for stale in [*(f"{s.slug}.png" for s in sections), *TABLE_FILES]:
        (out_dir / stale).unlink(missing_ok=True)  # from an earlier report

    body: list[str] = [_answer_section(run, top, result)]
    if run.audit is None:
        result.skipped["Audit"] = f"no audit.parquet: run `hpsearch audit {run.path}` after kfold"
    if run.best_trial_id is not None:
        table = _top_table(run, top)
        csv, page = out_dir / "top_trials.csv", out_dir / "top_trials.html"
        _write_csv(run.top_trials(top), csv)  # every column, for a spreadsheet
        write_text(
            page,
            f"<!doctype html><meta charset='utf-8'><title>top trials: {html.escape(run.name)}"
            f"</title><style>{_CSS}</style>{_table_html(table)}",
        )
        result.tables.update({csv.name: csv, page.name: page})
        body.append(f"<h2 id='top'>Top {len(table)} trials by {html.escape(run.metric)}</h2>")
        body.append(_table_html(table))
    else:
        result.skipped["Top trials"] = f"no trial has a {run.metric} yet"

    for s in sections:
        if s.slug == "audit_labels" and run.audit is not None:
            body.append(f"<section id='audit'><h2>Audit</h2>{_audit_tables(run, out_dir, result)}")
            body.append("</section>")
        try:
            fig = s.draw()
        except MissingDataError as e:
            result.skipped[s.title] = e.reason.replace("RUN_DIR", str(run.path))
            continue
        except Exception as e:  # noqa: BLE001 - one broken plot must not cost the others
            result.failed[s.title] = f"{type(e).__name__}: {e}"
            continue
        png, buf = out_dir / f"{s.slug}.png", io.BytesIO()
        fig.savefig(buf, dpi=dpi, format="png")
        atomic_write(png, buf.getvalue())
        result.plots[s.title] = png
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        body.append(
            f"<section id='{s.slug}'><h2>{html.escape(s.title)}</h2>"
            f"<p class='caption'>{html.escape(s.caption)}</p>"
            f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>"
            f"{_extra_tables(run, s.slug, out_dir, result)}</section>"
        )

    write_text(result.index_html, _page(run, body, result))
    return result


def _answer_table(answer: Answer, top: int) -> pd.DataFrame:
    """The comparison rows of the `top` configs with their cost and their part in the rule."""
    rec = answer.recommendation
    comparison = answer.comparison
    table = comparison[comparison["rank"] <= top].merge(answer.costs, on="config_id", how="left")

    def part(config: str) -> str:
        roles = ["best"] * (config == rec.best_config_id)
        roles += ["recommended"] * (config == rec.config_id)
        return ", ".join(roles) or ("within 1 SE" if config in rec.candidates else "")

    table["one_se_rule"] = table["config_id"].map(part)
    shown = [c for c in ANSWER_COLUMNS if c in table and table[c].notna().any()]
    return table[shown]


def _answer_section(run: Run, top: int, result: ReportResult) -> str:
    """The report's first section: the recommended config, why, its k-fold interval and cost,
    the test part's figure once `hpsearch final` has run, and the comparison table."""
    head = f"<section id='answer'><h2>{ANSWER_TITLE}</h2>"
    try:
        answer = recommend_run(run)
    except MissingDataError as e:
        reason = e.reason.replace("RUN_DIR", str(run.path))
        result.skipped[ANSWER_TITLE] = reason
        return f"{head}<p>No recommendation yet: {html.escape(reason)}.</p></section>"
    except Exception as e:  # noqa: BLE001 - the plots below still have something to say
        result.failed[ANSWER_TITLE] = f"{type(e).__name__}: {e}"
        return f"{head}<p class='warn'>The recommendation failed: see below.</p></section>"
    rec, final = answer.recommendation, answer.final
    result.recommendation = rec
    label = f" ({html.escape(rec.label)})" if rec.label != rec.config_id else ""
    test = final_text(final).replace("RUN_DIR", str(run.path))
    parts = [
        head,
        f"<p><b>Train {html.escape(rec.config_id)}</b>{label}: "
        f"{html.escape(interval_text(rec))}.</p>",
        f"<p>Why: {html.escape(rec.reason)}.</p>",
        f"<p>Cost: {html.escape(cost_text(rec))}.</p>",
        f"<p>Test part: {html.escape(test)}.</p>",
    ]
    if final is not None and final.warning:
        parts.append(f"<p class='warn'>Warning: {html.escape(final.warning)}.</p>")
    parts += [
        f"<h3>The top configs on the held-out folds (best: {html.escape(rec.best_config_id)})</h3>",
        _table_html(_answer_table(answer, top)),
        f"<p class='caption'>{html.escape(ANSWER_CAPTION)}</p></section>",
    ]
    return "".join(parts)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    write_text(path, df.to_csv(index=False))


def _extra_tables(run: Run, slug: str, out_dir: Path, result: ReportResult) -> str:
    if slug == "confusion_best":
        tid = _confusion_id(run)
        pairs = confused_pairs(run.confusion, tid, top=10)
        merges = merge_suggestions(run.confusion, tid, threshold=0.1)
        _write_csv(pairs, out_dir / "confused_pairs.csv")
        result.tables["confused_pairs.csv"] = out_dir / "confused_pairs.csv"
        text = "<h3>Most-confused class pairs</h3>" + _table_html(pairs)
        if merges.empty:
            return (
                text + "<p>No pair is confused both ways at 10% or more: no merge to suggest.</p>"
            )
        flags = " ".join(f"--merge {m}" for m in merges["merge"])
        return (
            text + "<h3>Merge suggestions (confused both ways, at least 10% each)</h3>"
            + _table_html(merges)
            + f"<p>To merge them: <code>hpsearch prepare PHOTOS {html.escape(flags)}</code></p>"
        )  # fmt: skip
    if slug == "pareto":
        front = front_table(run.trials, metric=run.metric, mode=run.mode)
        _write_csv(front, out_dir / "pareto_front.csv")
        result.tables["pareto_front.csv"] = out_dir / "pareto_front.csv"
        return (
            "<h3>The trials on the front (pareto: by MACs, pareto_params: by parameters), "
            "cheapest first</h3>" + _table_html(front)
        )
    if slug == "kfold":
        summary = kfold_summary(run.folds)
        _write_csv(summary, out_dir / "kfold_summary.csv")
        result.tables["kfold_summary.csv"] = out_dir / "kfold_summary.csv"
        return "<h3>Summary per config, split and metric</h3>" + _table_html(summary)
    return ""


def _audit_tables(run: Run, out_dir: Path, result: ReportResult) -> str:
    """Under the audit's pictures: the counts, the look-alike classes and the suggestion files."""
    audit = run.audit
    counts = audit["issue"].value_counts()
    text = (
        "<p>"
        + html.escape(", ".join(f"{int(n)} {issue}" for issue, n in counts.items()))
        + f" (all in <code>{html.escape(str(run.path / 'audit.parquet'))}</code>)</p>"
    )
    looks = audit[audit["issue"] == LOOKALIKE][["given", "suggested", "score"]]
    if looks.empty:
        text += "<p>No pair of classes is confused both ways at 10% or more.</p>"
    else:
        looks = looks.set_axis(["class_a", "class_b", "smaller rate"], axis=1)
        flags = " ".join(f"--merge {a}={b}" for a, b in looks[["class_a", "class_b"]].values)
        text += "<h3>Look-alike classes (confused both ways)</h3>" + _table_html(looks)
        text += f"<p>To merge them: <code>hpsearch prepare PHOTOS {html.escape(flags)}</code></p>"
    top = audit[audit["issue"] != LOOKALIKE].head(20)
    shown = ["path", "issue", "score", "given", "suggested", "part", "duplicate_of"]
    _write_csv(audit, out_dir / "audit.csv")
    result.tables["audit.csv"] = out_dir / "audit.csv"
    return text + "<h3>The surest findings</h3>" + _table_html(top[shown])  # fmt: skip


def _page(run: Run, body: list[str], result: ReportResult) -> str:
    counts = run.trials["status"].value_counts() if "status" in run.trials else pd.Series()
    status = ", ".join(f"{v} {html.escape(str(k))}" for k, v in counts.items())
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = " ".join(
        [f"<a href='#answer'>{ANSWER_TITLE}</a>"]
        + [f"<a href='#{p.stem}'>{html.escape(t)}</a>" for t, p in result.plots.items()]
    )
    skipped = "".join(
        f"<li><b>{html.escape(t)}</b>: {html.escape(r)}</li>" for t, r in result.skipped.items()
    )
    failed = "".join(
        f"<li><b>{html.escape(t)}</b>: {html.escape(r)}</li>" for t, r in result.failed.items()
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>hpsearch report: {html.escape(run.name)}</title><style>{_CSS}</style></head>",
        f"<body><h1>hpsearch report: {html.escape(run.name)}</h1>",
        f"<p class='meta'>run directory <code>{html.escape(str(run.path))}</code> · "
        f"objective {html.escape(run.metric)} ({run.mode}) · {len(run.trials)} trials "
        f"({status}) · written {now}</p><nav>{nav}</nav>",
        *body,
    ]
    if skipped:
        parts.append(f"<h2 id='skipped'>Not shown</h2><ul class='skip'>{skipped}</ul>")
    if failed:
        parts.append(f"<h2 id='failed'>Failed (please report)</h2><ul class='skip'>{failed}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def format_report_result(result: ReportResult) -> str:
    """The console summary: where index.html is, which plots were written, what was skipped."""
    lines = [f"report: {result.index_html}"]
    if result.recommendation is not None:
        rec = result.recommendation
        lines.append(f"{ANSWER_TITLE}: {rec.name}, {interval_text(rec)}")
    names = ", ".join(p.name for p in result.plots.values()) or "none"
    lines.append(f"plots ({len(result.plots)}): {names}")
    if result.tables:
        lines.append(f"tables: {', '.join(result.tables)}")
    if result.skipped:
        lines.append(f"skipped ({len(result.skipped)}):")
        lines += [f"  {title}: {reason}" for title, reason in result.skipped.items()]
    if result.failed:
        lines.append(f"failed ({len(result.failed)}), please report:")
        lines += [f"  {title}: {reason}" for title, reason in result.failed.items()]
    return "\n".join(lines)
