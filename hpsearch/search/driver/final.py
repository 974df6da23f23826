"""`hpsearch final`: train the chosen config on train + validation and evaluate it once on the
held-out test part, the one figure no choice has seen.

The config is the k-fold recommendation (`analysis.stats.recommend_run`) unless a trial is
named. It trains for the epochs it was estimated with (the k-fold epochs, else train.epochs),
in this process on every local core, or on this machine's GPU, the whole device, when the
run's trials had GPUs (resources.gpus > 0; a GPU that CUDA cannot use here is an error, `--cpu`
trains on the CPU instead), from the same-init start weights warmed up on train + validation
when the experiment uses them; the device memory is handed back when it ends, errors included.
Every call appends one evaluation to final.parquet (with per-class precision and recall and
the confusion matrix beside it) and saves the model's weights; `evaluation` counts the uses of
the test part, and a second one is flagged: choosing by the test part would make it a
validation part. For an s3:// or gs:// run it works in the run's working copy and uploads what
it wrote.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpsearch.analysis.stats import recommend_run, reuse_warning
from hpsearch.rundir import (
    FINAL_CLASSES_FILE,
    FINAL_CONFUSION_FILE,
    FINAL_DIR,
    FINAL_FILE,
    FOLDS_FILE,
    KFOLD_DIR,
    KFOLD_SPEC,
    TABLE_COLUMNS,
    atomic_write,
    coerce,
    write_parquet,
)
from hpsearch.search.driver.export import trial_config
from hpsearch.search.driver.gpus import check_local_gpu
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import Experiment, load_run_experiment
from hpsearch.search.experiment.space import config_label, model_config
from hpsearch.search.storage.run_store import RunStore
from hpsearch.search.trial import device
from hpsearch.search.trial.inputs import TrialSettings, load_final_data
from hpsearch.search.trial.trainable import Trainer, first_non_finite
from hpsearch.search.trial.warmup import warmup_weights


@dataclass(frozen=True)
class FinalResult:
    """One evaluation on the test part (a row of final.parquet) and its per-class tables."""

    row: dict[str, Any]
    classes: pd.DataFrame  # final_classes.parquet's rows of this evaluation
    confusion: pd.DataFrame  # final_confusion.parquet's rows of this evaluation
    model_file: Path

    @property
    def evaluation(self) -> int:
        return int(self.row["evaluation"])

    @property
    def warning(self) -> str | None:

        return reuse_warning(self.evaluation)


def choose_trial(run_dir: Path, trial_id: str | None) -> tuple[str, str]:
    """(trial id, why): the named trial, else the k-fold recommendation."""
    if trial_id:
        return trial_id, "named with --trial"
    if not (run_dir / FOLDS_FILE).exists():
        raise ExperimentError(
            f"{run_dir} has no k-fold estimates yet, and the final evaluation trains their "
            f"recommendation: run `hpsearch kfold {run_dir}` first, or name a trial with --trial ID"
        )

    try:
        rec = recommend_run(run_dir).recommendation
    except ValueError as e:  # MissingDataError included: says what is missing
        raise ExperimentError(
            f"{run_dir}: no recommendation from its k-fold estimates ({e}); finish them with "
            f"`hpsearch kfold {run_dir}`, or name a trial with --trial ID"
        ) from None
    return str(rec.config_id), rec.reason


def final_epochs(run_dir: Path, exp: Experiment, epochs: int | None) -> int:
    """--epochs, else the epochs of the k-fold estimate, else train.epochs."""
    if epochs:
        return int(epochs)
    spec = run_dir / KFOLD_DIR / KFOLD_SPEC
    if spec.exists():
        return int(json.loads(spec.read_text())["epochs"])
    return exp.train.epochs


def _previous(run_dir: Path) -> pd.DataFrame:
    path = run_dir / FINAL_FILE
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=TABLE_COLUMNS["final"])


def _append(run_dir: Path, file: str, table: str, rows: pd.DataFrame) -> None:
    """Add one evaluation's rows; rows of the same evaluation left by a crash are replaced."""
    path = run_dir / file
    old = pd.read_parquet(path) if path.exists() else None
    if old is not None:
        old = old[~old["evaluation"].isin(rows["evaluation"])]
    frame = pd.concat([old, rows], ignore_index=True) if old is not None and len(old) else rows
    write_parquet(coerce(frame, table), path)


def per_class(confusion: np.ndarray, classes: list[str], evaluation: int) -> pd.DataFrame:
    """Precision and recall per class from the confusion matrix (rows: true class); a class
    never predicted has precision 0 (torchmetrics' zero_division default)."""
    tp = np.diag(confusion).astype(float)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    return coerce(
        pd.DataFrame(
            {
                "evaluation": evaluation,
                "class_name": classes,
                "precision": precision,
                "recall": recall,
                "support": support.astype(np.int64),
            }
        ),
        "final_classes",
    )


def confusion_rows(confusion: np.ndarray, classes: list[str], evaluation: int) -> pd.DataFrame:
    rows = [
        {
            "evaluation": evaluation,
            "true_label": i,
            "pred_label": j,
            "true_class": classes[i],
            "pred_class": classes[j],
            "count": int(confusion[i, j]),
        }
        for i in range(len(classes))
        for j in range(len(classes))
    ]
    return coerce(pd.DataFrame(rows, columns=TABLE_COLUMNS["final_confusion"]), "final_confusion")


def run_final(
    run_dir: str | Path,
    *,
    trial_id: str | None = None,
    epochs: int | None = None,
    cpu: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> FinalResult:
    """Train the chosen config on train + validation, evaluate it on the test part, append the
    evaluation to the run directory's final tables and return it. `cpu`: on the CPU although
    the run's trials had GPUs."""
    store = RunStore.checkout(run_dir)  # an s3:// run: its working copy, up to date
    run_dir = store.path
    exp = load_run_experiment(run_dir)
    check_local_gpu(0.0 if cpu else exp.resources.gpus, None, "final")
    # The final training is alone on this machine's GPU: the whole device, not a trial's share.
    gpus = 1.0 if exp.resources.gpus > 0 and not cpu else 0.0
    chosen, why = choose_trial(run_dir, trial_id)
    config = trial_config(run_dir, chosen)
    n_epochs = final_epochs(run_dir, exp, epochs)
    previous = _previous(run_dir)
    evaluation = int(previous["evaluation"].max()) + 1 if len(previous) else 1
    if evaluation > 1:
        used = ", ".join(
            f"{r.config_id} ({r.accuracy:.3f})" for r in previous.itertuples(index=False)
        )
        log(
            f"WARNING: the test part was already used {evaluation - 1} time(s), by {used}; this "
            f"is evaluation {evaluation}, flagged as such in final.parquet and the report"
        )
    data = load_final_data(exp, progress=progress)
    settings = TrialSettings.from_experiment(
        exp, epochs=n_epochs, cpus=os.cpu_count() or 1, gpus=gpus
    )
    if exp.train.same_init is not None:
        init = warmup_weights(
            exp, data, settings, run_dir, path=run_dir / FINAL_DIR / "init_weights.pt"
        )
        data = dataclasses.replace(data, init_state=init)
    cfg = model_config(config, image_size=exp.data.image_size, num_classes=data.num_classes)
    log(
        f"final: trial {chosen} ({config_label(config)}; {why}), {n_epochs} epochs on "
        f"{len(data.train_idx)} train + validation images, then once on {len(data.val_idx)} "
        "test images"
    )
    model_file = run_dir / FINAL_DIR / f"model-{evaluation}.pt"
    row, confusion = _train_and_test(
        cfg,
        config,
        data,
        settings,
        chosen=chosen,
        model_file=model_file,
        progress=progress,
        log=log,
    )
    row = {"evaluation": evaluation, **row}
    classes = list(data.classes)
    result = FinalResult(
        row=row,
        classes=per_class(confusion, classes, evaluation),
        confusion=confusion_rows(confusion, classes, evaluation),
        model_file=model_file,
    )
    # The per-class tables first: final.parquet's new row is what marks the evaluation done.
    _append(run_dir, FINAL_CLASSES_FILE, "final_classes", result.classes)
    _append(run_dir, FINAL_CONFUSION_FILE, "final_confusion", result.confusion)
    _append(run_dir, FINAL_FILE, "final", coerce(pd.DataFrame([row]), "final"))
    # In the same order as above: final.parquet, which marks the evaluation done, last.
    weights = [model_file.relative_to(run_dir).as_posix()]
    init = f"{FINAL_DIR}/init_weights.pt"
    weights += [init] if (run_dir / init).exists() else []
    store.upload([*weights, FINAL_CLASSES_FILE, FINAL_CONFUSION_FILE, FINAL_FILE])
    return result


def _train_and_test(
    cfg,
    config: dict[str, Any],
    data,
    settings: TrialSettings,
    *,
    chosen: str,
    model_file: Path,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], np.ndarray]:
    """Train on train + validation, test once, save the weights to `model_file`: final.parquet's
    row (without its evaluation number) and the test confusion matrix. The model, its batches
    and the device memory they held are released when it ends, also on an error."""
    # lazy: torch takes ~2.5 s to import; only building or training a model needs it
    import torch

    n_epochs = settings.epochs
    trainer = None
    try:
        trainer = Trainer(
            cfg, config, data, settings, train_idx=data.train_idx, val_idx=data.val_idx
        )
        started = time.perf_counter()
        for epoch in range(n_epochs):
            result = trainer.train_epoch(epoch)
            bad = first_non_finite(result["step_loss"])
            if bad is not None:
                raise ExperimentError(
                    f"final: trial {chosen}'s config diverged at step {bad + 1} of epoch "
                    f"{epoch + 1} on train + validation; nothing was evaluated on the test part"
                )
            if progress:
                log(
                    f"  epoch {epoch + 1}/{n_epochs}: train loss {result['train_loss']:.4f}, "
                    f"accuracy {result['train_accuracy']:.3f} ({result['seconds']:.1f} s)"
                )
        test = trainer.evaluate(trainer.val_batches)
        seconds = time.perf_counter() - started
        state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    finally:
        if trainer is not None:
            trainer.close()
        trainer = None
        device.release_device_memory()
    classes = list(data.classes)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        model_file,
        lambda f: torch.save({"config": config, "classes": classes, "state_dict": state}, f),
    )
    row = {
        "config_id": chosen,
        "trial_id": chosen,
        "label": config_label(config),
        "accuracy": test["accuracy"],
        "macro_precision": test["macro_precision"],
        "loss": test["loss"],
        "epochs": n_epochs,
        "train_images": len(data.train_idx),
        "test_images": len(data.val_idx),
        "seconds": seconds,
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return row, np.asarray(test["confusion"], dtype=np.int64)


def format_final(result: FinalResult) -> str:
    r = result.row
    lines = [
        f"test part ({r['test_images']} images, evaluation {r['evaluation']}): accuracy "
        f"{r['accuracy']:.4f}, macro precision {r['macro_precision']:.4f}, loss {r['loss']:.4f}",
        f"  config   trial {r['trial_id']} ({r['label']}), {r['epochs']} epochs on "
        f"{r['train_images']} images, {r['seconds']:.0f} s",
        f"  weights  {result.model_file}",
        "  per class (precision / recall / images):",
    ]
    width = max(len(c) for c in result.classes["class_name"])
    for c in result.classes.itertuples(index=False):
        lines.append(
            f"    {c.class_name:<{width}}  {c.precision:.3f}  {c.recall:.3f}  {c.support:>6}"
        )
    if result.warning:
        lines.append(f"  WARNING: {result.warning}")
    return "\n".join(lines)
