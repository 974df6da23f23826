"""The `hpsearch` command line: one verb per job, heavy imports deferred to the verb.

Exit codes: 0 success, 1 a run failed, 2 bad input (a message says what to change).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from hpsearch.search.errors import ExperimentError

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """An error the user caused; the message says what to change. (ExperimentError, raised
    by the package, is handled the same way.)"""


def _cmd_models(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.models import format_models_table

    print(
        format_models_table(
            image_size=args.image_size, num_classes=args.classes, backbones=not args.presets_only
        )
    )
    return 0


def _parse_merge(items: Sequence[str]) -> dict[str, list[str]]:
    merge: dict[str, list[str]] = {}
    for item in items:
        new, sep, old = item.partition("=")
        olds = [o.strip() for o in old.split(",") if o.strip()]
        if not sep or not new.strip() or not olds:
            raise UsageError(f"--merge {item!r}: expected NEW=OLD1,OLD2 (e.g. People=Celebrities)")
        merge.setdefault(new.strip(), []).extend(olds)
    return merge


def _cmd_prepare(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.data_pipeline import DatasetError, format_summary, prepare

    try:
        _, summary = prepare(
            args.src,
            image_size=args.image_size,
            cache_root=args.cache,
            test_fraction=args.test_fraction,
            val_fraction=args.val_fraction,
            folds=args.folds,
            merge=_parse_merge(args.merge),
            exclude=args.exclude,
            relabel=args.relabel,
            workers=args.workers,
            seed=args.seed,
        )
    except DatasetError as e:
        raise UsageError(str(e)) from e
    print(format_summary(summary))
    return 0


def _load(path: str, overrides: Sequence[str], data: str | None = None, storage: str | None = None):
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.experiment.files import resolve_experiment
    from hpsearch.search.experiment.schema import load_experiment

    extra = list(overrides)
    if data:
        extra.append(f"data.folder={data}")
    if storage:
        extra.append(f"storage={storage}")
    return load_experiment(resolve_experiment(path), extra)


def _cmd_validate(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.driver.validate import check_experiment, format_validation

    exp = _load(args.file, args.set)
    try:
        skipped = check_experiment(exp, address=args.address, verb="validate")
    except ExperimentError as e:
        raise UsageError(f"{args.file}: {e}") from e
    if args.address and exp.resources.gpus > 0:  # the cluster's GPUs, as `run` checks them
        # lazy: Ray only with --address (validate alone imports no Ray, torch or pandas)
        from hpsearch.search.driver.session import ray_session

        with ray_session(args.address, gpus=exp.resources.gpus):
            pass
    print(format_validation(exp, args.file, skipped))
    return 0


def _print_answer(run_dir) -> bool:
    """Print "Which CNN to train" when the run has k-fold estimates; whether it did."""

    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.rundir import FOLDS_FILE
    from hpsearch.search.storage.remote import local_path

    run_dir = local_path(run_dir)  # an s3:// run: its working copy
    if not Path(run_dir, FOLDS_FILE).exists():
        return False
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.analysis.stats import format_recommendation, recommend_run

    answer = recommend_run(run_dir)
    print()
    print(format_recommendation(answer.recommendation, answer.comparison, final=answer.final))
    return True


def _finish(run_dir, tables, interrupted: bool, exp) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.console.printer import is_quiet
    from hpsearch.search.driver.export import format_best, search_failure
    from hpsearch.search.storage.remote import display

    run_dir = display(run_dir)  # an s3:// run by its URI, not by its working copy
    failure = None if interrupted else search_failure(tables["trials"], run_dir)
    if failure is not None:  # on stderr, so -q shows it too; the tables are written
        print(failure, file=sys.stderr)
        print(f"results: {run_dir}")
        return 1

    if is_quiet():  # -q: only where the results are, and whether the search finished
        print(f"results: {run_dir}")
        if interrupted:
            print(f"the search did not finish; continue it with: hpsearch resume {run_dir}")
        return 130 if interrupted else 0
    print()
    print(format_best(tables["trials"], metric=exp.search.metric, mode=exp.search.mode))
    print(f"\nresults: {run_dir}  (trials/epochs/steps/confusion .parquet, optuna.db)")
    if interrupted:
        print(f"the search did not finish; continue it with: hpsearch resume {run_dir}")
        return 130
    if _print_answer(run_dir):
        print(f"\nnext: hpsearch final {run_dir}  (train it, evaluate it once on the test part)")
    else:
        print(
            f"next: hpsearch kfold {run_dir} --top 3 --k 10  (error estimates and which config "
            f"to train), then hpsearch final {run_dir}"
        )
    return 0


def _run_search(exp, args: argparse.Namespace, *, report: bool = False) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.console.printer import is_quiet
    from hpsearch.search.driver.study import run

    run_dir, tables, interrupted = run(
        exp, name=args.name, address=args.address, progress=not is_quiet()
    )
    code = _finish(run_dir, tables, interrupted, exp)
    if report and not interrupted:
        # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
        from hpsearch.analysis import format_report_result, write_report

        result = write_report(run_dir)
        if not is_quiet():
            print()
            print(format_report_result(result))
    return code


def _cmd_run(args: argparse.Namespace) -> int:
    edits = [  # after --set: the flags win; JSON: the path stays a string in YAML
        f"data.{key}={json.dumps(value)}"
        for key, value in (("exclude", args.exclude), ("relabel", args.relabel))
        if value is not None
    ]
    return _run_search(_load(args.file, [*args.set, *edits], args.data, args.storage), args)


def _cmd_resume(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.console.printer import is_quiet
    from hpsearch.search.driver.study import resume

    run_dir, tables, interrupted = resume(
        args.run_dir, address=args.address, progress=not is_quiet()
    )
    exp = _load(str(run_dir / "experiment.yaml"), [])
    return _finish(run_dir, tables, interrupted, exp)


def _cmd_demo(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.console.printer import is_quiet
    from hpsearch.search.driver.demo import DEMO_EXPERIMENT, write_digits

    folder = write_digits(args.out)
    if not is_quiet():
        print(f"demo data: scikit-learn digits written as an image folder in {folder}")
    exp = _load(str(args.experiment or DEMO_EXPERIMENT), args.set, str(folder), args.storage)
    return _run_search(exp, args, report=True)


def _cmd_cache(args: argparse.Namespace) -> int:

    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.data_pipeline import default_cache_root
    from hpsearch.data_pipeline.housekeeping import clean_caches, format_caches, list_caches

    root = Path(args.cache).expanduser() if args.cache else default_cache_root()
    if args.action == "list":
        caches = list_caches(root)
        print(f"caches in {root}:")
        print(format_caches(caches))
        total = sum(c.bytes for c in caches)
        print(f"{len(caches)} cache(s), {total / 1e9:.2f} GB on disk")
        return 0
    if args.older_than is None and not args.all:
        raise UsageError("cache clean: say which caches to remove: --older-than DAYS or --all")
    freed = 0
    for cache, done in clean_caches(root, older_than_days=args.older_than, everything=args.all):
        print(f"{cache.path.name}: {done}")
        freed += cache.bytes if done == "removed" else 0
    print(f"freed {freed / 1e9:.2f} GB")
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.models import check_backbone_name, fetch_weights, is_backbone, weights_file

    names = []
    for name in args.names:
        try:
            names.append(check_backbone_name(name if is_backbone(name) else f"tv/{name}"))
        except ValueError as e:
            raise UsageError(str(e)) from e
    if args.action == "where":
        for name in names:
            path = weights_file(name)
            print(f"tv/{name}: {path} ({'present' if path.is_file() else 'missing'})")
        return 0
    try:
        paths = fetch_weights(names)
    except (RuntimeError, ValueError) as e:
        raise UsageError(str(e)) from e
    for name, path in zip(names, paths, strict=True):
        print(f"tv/{name}: {path}")
    print(
        "copy these files to the same path under TORCH_HOME (default ~/.cache/torch) on a "
        "machine without internet"
    )
    return 0


def _cmd_final(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.driver.final import format_final, run_final

    result = run_final(args.run_dir, trial_id=args.trial, epochs=args.epochs, cpu=args.cpu)
    print(format_final(result))
    _print_answer(args.run_dir)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.driver.model_export import ExportFailed, export_model, format_export

    try:
        result = export_model(args.run_dir, args.out, trial_id=args.trial, force=args.force)
    except ExportFailed as e:
        print(f"hpsearch export: {e}", file=sys.stderr)
        return 1
    print(format_export(result))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.data_pipeline.predict import (
        ModelFolderError,
        check_output,
        format_skipped,
        predict,
        write_predictions,
    )

    try:
        if args.out is not None:
            check_output(args.out)  # before the work, not after it
        result = predict(args.model_dir, args.paths, top_k=args.top_k, batch_size=args.batch_size)
    except ModelFolderError as e:
        raise UsageError(str(e)) from e
    if len(result.skipped):
        print(format_skipped(result.skipped), file=sys.stderr)
    if result.table.empty:
        print("hpsearch predict: no image could be read: nothing predicted", file=sys.stderr)
        return 1
    if args.out is None:
        try:
            result.table.to_csv(sys.stdout, index=False)
            sys.stdout.flush()
        except BrokenPipeError:  # `hpsearch predict ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    else:
        path = write_predictions(result.table, args.out)
        print(f"{len(result.table)} predictions in {path}", file=sys.stderr)
    return 0


def _cmd_kfold(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.analysis.kfold import format_kfold_summary, kfold_summary
    from hpsearch.search.console.printer import is_quiet
    from hpsearch.search.driver.kfold import run_kfold

    folds, interrupted = run_kfold(
        args.run_dir,
        top=args.top,
        k=args.k,
        epochs=args.epochs,
        trial_ids=args.trials or None,
        address=args.address,
        progress=not is_quiet(),
    )
    print(f"\nfolds: {len(folds)} rows in {args.run_dir}/folds.parquet")
    if len(folds) and not is_quiet():
        print(format_kfold_summary(kfold_summary(folds)))
        _print_answer(args.run_dir)
        print(
            f"\nlikely wrong labels, near-duplicates, look-alike classes: hpsearch audit {args.run_dir}"
        )
    if interrupted:
        print("the k-fold run did not finish; run the same command again to continue it")
        return 130
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.analysis.audit import format_audit
    from hpsearch.search.console.printer import is_quiet
    from hpsearch.search.driver.audit import run_audit

    result = run_audit(
        args.run_dir,
        config_id=args.config,
        lookalike_threshold=args.lookalike_threshold,
        progress=not is_quiet(),
    )
    print(format_audit(result.audit, top=args.top))
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(
        f"\n{len(result.audit)} findings in {result.run_dir}/audit.parquet: the out-of-sample "
        f"probabilities of config {result.config_id} for {result.images} images ({seconds})"
    )
    if result.commands:
        print(
            f"review {result.relabel} (the suggested class of each likely wrong label) and "
            f"{result.exclude} (the near-copies to leave out): delete the lines you disagree "
            "with, then prepare and search again with them:"
        )
        for command in result.commands:
            print(f"  {command}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.analysis import format_report_result, write_report
    from hpsearch.rundir import REPORT_DIR
    from hpsearch.search.storage.run_store import RunStore

    store = RunStore.checkout(args.run_dir)  # an s3:// run: its working copy, up to date
    try:
        result = write_report(store.path, out=args.out)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    print(format_report_result(result))
    if store.remote is not None and args.out is None:
        store.upload([REPORT_DIR])
        print(f"report uploaded to {store.tune_path(REPORT_DIR)}/")
    return 1 if result.failed else 0


def _cmd_schema(args: argparse.Namespace) -> int:

    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.experiment.reference import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"JSON Schema of experiment files written to {out}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.integrations.dashboard import DEFAULT_HOST, DEFAULT_PORT, serve

    port = DEFAULT_PORT if args.port is None else args.port
    serve(args.run_dir, host=args.host or DEFAULT_HOST, port=port)
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        default=None,
        help="where run directories go: a folder, or s3://BUCKET/PREFIX or gs://BUCKET/PREFIX "
        "(default: the file's storage, runs/)",
    )
    p.add_argument(
        "--name", default=None, help="run directory name (default: <experiment name>-<date>-<time>)"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join, e.g. auto (default: start Ray locally)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a field of the file; repeatable",
    )
    _add_console_options(p)


def _add_edit_options(p: argparse.ArgumentParser, *, overrides: bool) -> None:
    """--exclude / --relabel of `prepare` and `run` (data_pipeline.edits)."""
    p.add_argument(
        "--exclude",
        default=None,
        metavar="FILE",
        help="CSV or Parquet file of images to leave out of every part: column path, "
        "relative to the image folder (e.g. the exclude.csv of `hpsearch audit`)"
        + ("; overrides data.exclude" if overrides else ""),
    )
    p.add_argument(
        "--relabel",
        default=None,
        metavar="FILE",
        help="CSV or Parquet file of images to give another class: columns path and class "
        "(e.g. the relabel.csv of `hpsearch audit`)"
        + ("; overrides data.relabel" if overrides else ""),
    )


def _add_console_options(p: argparse.ArgumentParser) -> None:
    """-v / -q of the verbs that run trials (search.console.printer); default: a line per finished
    trial and a summary."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "-v",
        "--verbose",
        dest="console",
        action="store_const",
        const="verbose",
        default="normal",
        help="Ray Tune's progress table every 15 s and Ray's log messages",
    )
    g.add_argument(
        "-q",
        "--quiet",
        dest="console",
        action="store_const",
        const="quiet",
        help="only errors (on stderr) and where the results are",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter and architecture search for image-folder classifiers.",
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    m = sub.add_parser(
        "models", help="table of the presets and suggested backbones: size, cost, feasibility"
    )
    m.add_argument(
        "--presets-only",
        action="store_true",
        help="leave out the torchvision backbones (their cost takes seconds: torch imports)",
    )
    m.add_argument(
        "--image-size", type=int, default=None, help="input size in px (default: each preset's own)"
    )
    m.add_argument(
        "--classes", type=int, default=28, help="number of classes (default: 28, the seed's)"
    )
    m.set_defaults(func=_cmd_models)

    pr = sub.add_parser(
        "prepare", help="scan an image folder, split it and decode it once into a cache"
    )
    pr.add_argument("src", help="image folder: one sub-folder per class")
    pr.add_argument("--image-size", type=int, required=True, help="side of the square crop in px")
    pr.add_argument(
        "--cache", default=None, help="cache root (default: $HPSEARCH_CACHE or ~/.cache/hpsearch)"
    )
    pr.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="held-out test part, read only by `hpsearch final` (default 0.1)",
    )
    pr.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="validation part that trials report on and the search selects by (default 0.1)",
    )
    pr.add_argument(
        "--folds",
        type=int,
        default=0,
        help="also assign K stratified folds of train + validation (0: none)",
    )
    pr.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="NEW=OLD1,OLD2",
        help="merge classes; repeatable",
    )
    pr.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: all cores)"
    )
    pr.add_argument("--seed", type=int, default=0, help="seed of the split and the folds")
    _add_edit_options(pr, overrides=False)
    pr.set_defaults(func=_cmd_prepare)

    v = sub.add_parser("validate", help="check an experiment file; exit 2 naming each bad field")
    v.add_argument("file")
    v.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a field; repeatable",
    )
    v.add_argument(
        "--address",
        default=None,
        help="the Ray cluster the run will join, e.g. auto: its GPUs are checked instead of "
        "this machine's (default: this machine's)",
    )
    v.set_defaults(func=_cmd_validate)

    sc = sub.add_parser(
        "schema", help="write the experiment files' JSON Schema, for editors (VS Code's YAML)"
    )
    sc.add_argument("--out", default=None, metavar="FILE", help="write it here (default: stdout)")
    sc.set_defaults(func=_cmd_schema)

    r = sub.add_parser("run", help="run the search an experiment file describes")
    r.add_argument("file", help="experiment YAML or packaged name, e.g. experiments/demo.yaml")
    r.add_argument("--data", default=None, help="image folder (overrides data.folder)")
    _add_edit_options(r, overrides=True)
    _add_run_options(r)
    r.set_defaults(func=_cmd_run)

    rs = sub.add_parser("resume", help="continue an interrupted or crashed run")
    rs.add_argument("run_dir")
    rs.add_argument(
        "--address", default=None, help="Ray cluster to join (default: start Ray locally)"
    )
    _add_console_options(rs)
    rs.set_defaults(func=_cmd_resume)

    kf = sub.add_parser(
        "kfold", help="k-fold error estimates of a run's best configs (folds.parquet)"
    )
    kf.add_argument("run_dir")
    kf.add_argument("--top", type=int, default=3, help="how many of the best configs (default 3)")
    kf.add_argument("--k", type=int, default=10, help="number of stratified folds (default 10)")
    kf.add_argument(
        "--epochs", type=int, default=None, help="epochs per fold (default: the run's train.epochs)"
    )
    kf.add_argument(
        "--trials",
        nargs="+",
        default=None,
        metavar="ID",
        help="re-train these trial ids instead of the top N",
    )
    kf.add_argument(
        "--address", default=None, help="Ray cluster to join (default: start Ray locally)"
    )
    _add_console_options(kf)
    kf.set_defaults(func=_cmd_kfold)

    au = sub.add_parser(
        "audit",
        help="after kfold: likely wrong labels, near-duplicates, look-alike classes (audit.parquet)",
    )
    au.add_argument("run_dir")
    au.add_argument(
        "--config",
        default=None,
        metavar="ID",
        help="whose k-fold predictions to audit with (default: the comparison's best config)",
    )
    au.add_argument(
        "--lookalike-threshold",
        type=float,
        default=0.1,
        metavar="RATE",
        help="look-alike classes: confused at least this often in both directions (default 0.1)",
    )
    au.add_argument("--top", type=int, default=5, help="findings of each kind to print (default 5)")
    _add_console_options(au)
    au.set_defaults(func=_cmd_audit)

    ca = sub.add_parser(
        "cache", help="decoded caches: list them, or clean the old ones (never one in use)"
    )
    ca.add_argument("action", choices=("list", "clean"))
    ca.add_argument(
        "--cache", default=None, help="cache root (default: $HPSEARCH_CACHE or ~/.cache/hpsearch)"
    )
    ca.add_argument(
        "--older-than", type=float, default=None, metavar="DAYS", help="clean: unused this long"
    )
    ca.add_argument("--all", action="store_true", help="clean: every cache not in use")
    ca.set_defaults(func=_cmd_cache)

    we = sub.add_parser(
        "weights",
        help="pretrained backbone weights: fetch (download into torchvision's cache) or where",
    )
    we.add_argument("action", choices=("fetch", "where"))
    we.add_argument("names", nargs="+", metavar="NAME", help="backbones, e.g. tv/resnet18")
    we.set_defaults(func=_cmd_weights)

    fi = sub.add_parser(
        "final",
        help="train the recommended config on train + validation, evaluate it once on the test part",
    )
    fi.add_argument("run_dir")
    fi.add_argument(
        "--trial",
        default=None,
        metavar="ID",
        help="the trial whose config to train (default: the k-fold recommendation)",
    )
    fi.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs (default: the k-fold estimate's, else the run's train.epochs)",
    )
    fi.add_argument(
        "--cpu",
        action="store_true",
        help="train on this machine's CPU although the run's trials had GPUs (default: the "
        "run's device; a GPU that CUDA cannot use here is an error)",
    )
    fi.set_defaults(func=_cmd_final)

    ex = sub.add_parser(
        "export",
        help="the final model (or a trial's) as ONNX and torch.export files with a model card",
    )
    ex.add_argument("run_dir")
    ex.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder to write model.onnx, model.pt2 and model.json to",
    )
    ex.add_argument(
        "--trial",
        default=None,
        metavar="ID",
        help="export this trial's newest checkpoint (default: the latest final evaluation's "
        "model, else the best trial's checkpoint)",
    )
    ex.add_argument(
        "--force",
        action="store_true",
        help="write into --out although it is not empty (replacing the model files)",
    )
    ex.set_defaults(func=_cmd_export)

    pe = sub.add_parser(
        "predict", help="classify image files and folders with an exported model (onnxruntime)"
    )
    pe.add_argument("model_dir", help="folder written by `hpsearch export`")
    pe.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)"
    )
    pe.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the predictions to FILE.parquet or FILE.csv (default: CSV on stdout)",
    )
    pe.add_argument(
        "--top-k",
        type=int,
        default=3,
        metavar="K",
        help="the K most probable classes per image (default 3)",
    )
    pe.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)"
    )
    pe.set_defaults(func=_cmd_predict)

    rp = sub.add_parser(
        "report", help="write RUN_DIR/report/: every plot the run supports, index.html"
    )
    rp.add_argument("run_dir")
    rp.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report)")
    rp.set_defaults(func=_cmd_report)

    db = sub.add_parser(
        "dashboard", help="optuna-dashboard on a run's optuna.db (read-only; also while it runs)"
    )
    db.add_argument("run_dir")
    db.add_argument("--port", type=int, default=None, help="port (default 8080; 0: any free one)")
    db.add_argument(
        "--host", default=None, help="address to listen on (default 127.0.0.1: this machine only)"
    )
    db.set_defaults(func=_cmd_dashboard)

    d = sub.add_parser(
        "demo", help="write scikit-learn's digits as an image folder and search on it"
    )
    d.add_argument("--out", default="demo_data/digits", help="where the digits folder goes")
    d.add_argument(
        "--experiment",
        default=None,
        help="experiment file or packaged experiment name (default: the packaged demo)",
    )
    _add_run_options(d)
    d.set_defaults(func=_cmd_demo)
    return p


def _console_level(args: argparse.Namespace):
    """The verb's -v / -q for the duration of the verb (verbs without them: as they are)."""
    if not hasattr(args, "console"):
        return nullcontext()
    # lazy: a verb imports what it runs (--help, validate, prepare: no Ray, torch, pandas)
    from hpsearch.search.console.printer import use_level

    return use_level(args.console)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _console_level(args):
            return args.func(args)
    except (UsageError, ExperimentError) as e:
        print(f"hpsearch {args.verb}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"hpsearch {args.verb}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        print(
            f"hpsearch {args.verb}: error: {e.strerror} while writing {e.filename or 'a file'}: "
            "free space there (or write elsewhere: --storage DIR, --cache DIR). Files are "
            "replaced atomically, so the ones written before are intact",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
