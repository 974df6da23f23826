"""`hpsearch export`: the chosen CNN as files that run without hpsearch.

The model is the latest final evaluation's (`final/model-N.pt`, trained on train + validation),
else the newest checkpoint of the named trial or of the run's best. It is wrapped so that it
takes what `prepare`'s decoder gives, a uint8 RGB batch [N, 3, S, S], and does the rest
inside: float, / 255, the normalisation it trained with (pretrained weights: theirs; else the
training images' mean and std), the network in eval mode; it returns logits. Two files come
out, with a dynamic batch dimension: ONNX (weights inside; onnxruntime, TensorRT, OpenVINO)
and `torch.export`'s program (`.pt2`). Before anything is written to the output folder both
are loaded back from disk and run on real images of the test part: their logits must equal
the PyTorch model's within `ATOL + RTOL * max |logit|`, else the export fails with the
difference. The model card (`model.json`) says what a user needs: the classes in output
order, the preprocessing, the config and cost, the latency here, the test part's metrics
with their intervals (or why there are none), the data's fingerprint and hpsearch's version.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch
from torch import nn

import hpsearch
from hpsearch import models
from hpsearch.analysis.final_metrics import final_metrics
from hpsearch.analysis.stats import read_final
from hpsearch.data_pipeline.predict import (
    CARD_FILE,
    CARD_FORMAT,
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    PT2_FILE,
    open_session,
)
from hpsearch.rundir import (
    FINAL_DIR,
    TRIAL_PREFIX,
    TRIALS_FILE,
    rank_trials,
    write_json,
)
from hpsearch.search.driver.export import trial_config
from hpsearch.search.errors import ExperimentError
from hpsearch.search.experiment.schema import load_run_experiment
from hpsearch.search.experiment.space import config_label, model_config
from hpsearch.search.storage.run_store import RunStore
from hpsearch.search.trial.checkpoints import REPORTS_FILE, STATE_FILE, local_checkpoints
from hpsearch.search.trial.inputs import load_cache_and_data

# The self-check: |exported - PyTorch| <= ATOL + RTOL * max |PyTorch logit|, on CHECK_IMAGES
# images. float32 kernels that sum in another order differ by ~1e-6 of the logits' scale.
ATOL = 1e-4
RTOL = 1e-4
CHECK_IMAGES = 32
LATENCY_BATCHES = (1, 64)
LATENCY_SECONDS = 2.0  # timed runs per batch size and runtime: up to this long (3 at least)
PREPROCESSING = [
    "decode the file; apply its EXIF orientation; convert to RGB (16-bit greyscale: the high "
    "byte; transparent pixels over white)",
    "resize so that the shorter side is S px: PIL's bilinear filter (antialiased when "
    "shrinking), the longer side int(S * long / short) px, as torchvision's Resize(S)",
    "crop the centre S x S: left round((width - S) / 2), top round((height - S) / 2), as "
    "torchvision's CenterCrop(S)",
    "to uint8 [3, S, S], channels R, G, B; stack a batch [N, 3, S, S]",
]


class ExportFailed(Exception):
    """The exported files do not reproduce the model (or one could not be written)."""


class ImageClassifier(nn.Module):
    """The trained network behind the input it was trained with: uint8 RGB [N, 3, S, S] in,
    logits [N, classes] out; (x / 255 - mean) / std inside, as `Batches` normalises."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        std_t = torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1))
        self.register_buffer(
            "shift", (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(torch.float32) * self.scale + self.shift)


@dataclass(frozen=True)
class Source:
    """Which weights are exported, and what the card says of them."""

    config: dict[str, Any]
    classes: list[str] | None  # None: the data's (a trial checkpoint does not store them)
    state_dict: dict[str, torch.Tensor]
    card: dict[str, Any]  # the card's "source"
    evaluation: int | None = None  # the final evaluation's number
    reports: tuple[dict[str, Any], ...] = ()  # a trial's reports up to the checkpoint


@dataclass(frozen=True)
class ExportResult:
    out: Path
    card: dict[str, Any]


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _final_source(store: RunStore, evaluation: int, trial_id: str) -> Source:
    name = f"{FINAL_DIR}/model-{evaluation}.pt"
    store.download(FINAL_DIR)
    if not (store.path / name).is_file():
        raise ExperimentError(
            f"{store.shown}: final.parquet has evaluation {evaluation}, but its weights {name} "
            "are missing: run `hpsearch final` again, or export a trial with --trial ID"
        )
    saved = _load(store.path / name)
    card = {"kind": "final", "evaluation": evaluation, "trial_id": trial_id, "file": name}
    card["trained_on"] = "train + validation parts"
    return Source(saved["config"], list(saved["classes"]), saved["state_dict"], card, evaluation)


def _trial_source(store: RunStore, trial_id: str, why: str) -> Source:
    config = trial_config(store.path, trial_id)  # ExperimentError naming the run's trials
    store.download(f"{TRIAL_PREFIX}{trial_id}")
    found = local_checkpoints(store.path / f"{TRIAL_PREFIX}{trial_id}")
    if not found:
        raise ExperimentError(
            f"trial {trial_id} has no checkpoint (it ended before its first epoch, or its "
            f"folder was cleaned): export another with --trial ID, or run `hpsearch final "
            f"{store.shown} --trial {trial_id}` to train its config and export that"
        )
    state = _load(found[0] / STATE_FILE)
    reports = tuple(json.loads((found[0] / REPORTS_FILE).read_text()))
    card = {
        "kind": "trial",
        "trial_id": trial_id,
        "epoch": int(state["epoch"]) + 1,
        "file": found[0].relative_to(store.path.resolve()).as_posix() + f"/{STATE_FILE}",
        "chosen": why,
        "trained_on": "train part",
    }
    return Source(config, None, state["model"], card, reports=reports)


def find_source(store: RunStore, trial_id: str | None, metric: str, mode: str | None) -> Source:
    """The latest final evaluation's model, else `trial_id`'s newest checkpoint, else the best
    trial's (by the run's metric) that has one."""
    if trial_id:
        return _trial_source(store, trial_id, "named with --trial")
    final = read_final(store.path)
    if final is not None:
        return _final_source(store, final.evaluation, final.trial_id)
    path = store.path / TRIALS_FILE
    if not path.is_file():
        raise ExperimentError(
            f"{store.shown} has no {TRIALS_FILE} yet: let the search finish (or `hpsearch "
            f"resume {store.shown}`), or name a trial with --trial ID"
        )
    ranked = rank_trials(pd.read_parquet(path), metric, mode)["trial_id"].astype(str).tolist()
    for rank, tid in enumerate(ranked):
        if local_checkpoints(store.path / f"{TRIAL_PREFIX}{tid}"):
            why = f"the best trial by {metric}"
            if rank:
                why += f" with a checkpoint (the better {', '.join(ranked[:rank])} have none)"
            return _trial_source(store, tid, why)
    raise ExperimentError(
        f"{store.shown}: no trial with a {metric} has a checkpoint to export; run `hpsearch "
        f"final {store.shown} --trial ID` to train one"
    )


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} is a file: name a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExperimentError(
            f"--out {out} exists and is not empty: name a new folder, or pass --force to "
            f"replace the model files in it ({ONNX_FILE}, {PT2_FILE}, {CARD_FILE})"
        )


def _check_images(cache, n: int) -> tuple[np.ndarray, str]:
    """Up to `n` images of the test part (else the validation part), spread over it."""
    for part, name in (("test", "the test part"), ("val", "the validation part")):
        rows = cache.indices(part)
        if len(rows):
            pick = np.unique(rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).astype(int)])
            return np.ascontiguousarray(cache.images[pick]), f"{len(pick)} images of {name}"
    rng = np.random.default_rng(0)
    size = cache.image_size
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), f"{n} random images"


def write_exported(model: ImageClassifier, example: torch.Tensor, folder: Path) -> None:
    """Write PT2_FILE and ONNX_FILE (the ONNX from the same program) into `folder`."""
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, folder / PT2_FILE)
        torch.onnx.export(
            program,
            (example,),
            folder / ONNX_FILE,
            dynamo=True,
            external_data=False,  # one self-contained file (up to ONNX's 2 GB)
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
        onnx.checker.check_model(str(folder / ONNX_FILE))
    except Exception as e:  # noqa: BLE001 (torch's exporters raise many kinds: name it)
        raise ExportFailed(f"the export failed: {type(e).__name__}: {e}") from e


def self_check(
    model: ImageClassifier, folder: Path, images: np.ndarray, what: str, threads: int
) -> dict[str, Any]:
    """Load both files back and compare their logits with the model's; ExportFailed with the
    differences when one is beyond the tolerance."""
    with torch.inference_mode():
        reference = model(torch.from_numpy(images)).numpy()
        pt2 = torch.export.load(folder / PT2_FILE).module()(torch.from_numpy(images)).numpy()
    onnx_logits = open_session(folder / ONNX_FILE, threads=threads).run(
        [OUTPUT_NAME], {INPUT_NAME: images}
    )[0]
    scale = float(np.abs(reference).max())
    tolerance = ATOL + RTOL * scale
    diffs = {
        "onnx": float(np.abs(onnx_logits - reference).max()),
        "pt2": float(np.abs(pt2 - reference).max()),
    }
    top1 = reference.argmax(1)
    agree = {
        "onnx": float((onnx_logits.argmax(1) == top1).mean()),
        "pt2": float((pt2.argmax(1) == top1).mean()),
    }
    check = {
        "images": what,
        "reference": "the PyTorch model (eval mode, float32, CPU) on the same uint8 batch",
        "rule": "max |exported logit - PyTorch logit| <= atol + rtol * max |PyTorch logit|",
        "atol": ATOL,
        "rtol": RTOL,
        "max_abs_logit": scale,
        "tolerance": tolerance,
        "max_abs_diff": diffs,
        "top1_agreement": agree,
    }
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        detail = ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
        raise ExportFailed(
            f"self-check failed: the exported logits differ from the PyTorch model's on {what} "
            f"by up to {detail} (tolerance {tolerance:.3g} = {ATOL:g} + {RTOL:g} x "
            f"{scale:.3g}); nothing was written"
        )
    return check


def _median_ms(run: Callable[[], Any]) -> dict[str, float]:
    """Median wall time of `run` in ms, after a warm-up: 3 runs at least, then more while the
    time lasts (LATENCY_SECONDS), 50 at most."""
    run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < LATENCY_SECONDS and len(times) < 50):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(times) * 1e3, "runs": len(times)}


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_latency(model: ImageClassifier, folder: Path, size: int, threads: int) -> dict:
    """Median ms per batch of LATENCY_BATCHES random images, PyTorch (eager) and onnxruntime,
    on this machine's CPU with `threads` threads."""
    session = open_session(folder / ONNX_FILE, threads=threads)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {
        "device": "cpu",
        "processor": _processor(),
        "threads": threads,
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
    }
    for n in LATENCY_BATCHES:
        x = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            out[f"batch_{n}"] = {
                "torch": _median_ms(lambda xt=xt: model(xt)),
                "onnxruntime": _median_ms(lambda x=x: session.run([OUTPUT_NAME], {INPUT_NAME: x})),
            }
    return out


def _no_test(source: Source, shown: str) -> str:
    return (
        f"none: this is trial {source.card['trial_id']}'s checkpoint from the search, which "
        f"never saw the test part; `hpsearch final {shown} --trial {source.card['trial_id']}` "
        "trains its config on train + validation and evaluates it once on the test part, and "
        "`hpsearch export` then exports that model with its test metrics"
    )


def export_model(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    trial_id: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export the run's model (see the module's docstring) into `out`; ExperimentError for
    what the user can change, ExportFailed when the exported files do not match the model."""
    store = RunStore.checkout(run_dir)
    exp = load_run_experiment(store.path)
    out = Path(out)
    _check_out(out, force)
    source = find_source(store, trial_id, exp.search.metric, exp.search.mode)
    cache, _ = load_cache_and_data(exp, progress=True)  # built already: a scan, no decode
    classes = list(cache.classes)
    if source.classes is not None and source.classes != classes:
        raise ExperimentError(
            f"the model's classes {source.classes} differ from the prepared data's {classes}: "
            f"the image folder {exp.data.folder} changed after the model was trained"
        )
    cfg = model_config(source.config, image_size=cache.image_size, num_classes=len(classes))
    # The state dict holds every weight: build without reading a pretrained file.
    net = models.build(cfg.replace(pretrained=None) if getattr(cfg, "pretrained", None) else cfg)
    net.load_state_dict(source.state_dict)
    pretrained = models.input_normalization(cfg)
    mean, std = pretrained if pretrained is not None else (cache.mean, cache.std)
    model = ImageClassifier(net, tuple(mean), tuple(std)).eval()
    label = config_label(source.config)
    log(f"export: {label}, {describe_source(source.card)} -> {out}")

    threads = torch.get_num_threads()
    images, what = _check_images(cache, CHECK_IMAGES)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        # two rows: a batch of 1 could be taken for a fixed size by the exporters
        write_exported(model, torch.from_numpy(images[np.arange(2) % len(images)]), staging)
        check = self_check(model, staging, images, what, threads)
        latency = measure_latency(model, staging, cache.image_size, threads)
        cost = models.cost(cfg)
        opset = {
            o.domain or "ai.onnx": o.version for o in onnx.load(staging / ONNX_FILE).opset_import
        }
        card = {
            "format_version": CARD_FORMAT,
            "hpsearch_version": hpsearch.__version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "run": store.shown,
            "experiment": exp.name,
            "source": source.card,
            "files": {"onnx": ONNX_FILE, "torch_export": PT2_FILE, "onnx_opset": opset},
            "classes": classes,
            "image_size": cache.image_size,
            "input": {
                "name": INPUT_NAME,
                "dtype": "uint8",
                "shape": ["N", 3, cache.image_size, cache.image_size],
                "layout": "NCHW",
                "channels": "RGB",
                "range": "0..255",
                "batch": "any N >= 1",
            },
            "preprocessing": {
                "before_the_model": PREPROCESSING,
                "same_as": "hpsearch prepare (hpsearch.data_pipeline.decode.decode_image)",
                "note": "JPEGs much larger than S are decoded at a reduced DCT scale first; a "
                "pixel may differ from a full decode by one level",
            },
            "normalization": {
                "inside_the_model": "x = (images / 255 - mean) / std, per channel",
                "mean": list(mean),
                "std": list(std),
                "from": "the pretrained weights'" if pretrained else "the training images'",
            },
            "output": {
                "name": OUTPUT_NAME,
                "dtype": "float32",
                "shape": ["N", len(classes)],
                "kind": "logits: one score per class, in the order of `classes`; softmax over "
                "the last axis gives probabilities, argmax the class",
            },
            "config": source.config,
            "model": {"label": label, "params": cost.params, "macs": cost.macs},
            "latency": latency,
            "test": None,
            "data": {
                "fingerprint": cache.meta.get("fingerprint"),
                "folder": cache.meta.get("source"),
                "images": {p: cache.meta["counts"][p] for p in ("train", "val", "test")},
            },
            "self_check": check,
        }
        if source.evaluation is not None:
            card["test"] = final_metrics(store.path, source.evaluation)
        else:
            card["test_note"] = _no_test(source, store.shown)
            last = source.reports[-1] if source.reports else {}
            card["validation"] = {k: v for k, v in last.items() if k.startswith("val_")}
        write_json(staging / CARD_FILE, card)
        out.mkdir(parents=True, exist_ok=True)
        for name in (ONNX_FILE, PT2_FILE, CARD_FILE):  # the card last: it marks them complete
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out=out, card=card)


def describe_source(source: dict[str, Any]) -> str:
    """The card's "source" in words."""
    if source["kind"] == "final":
        return f"final evaluation {source['evaluation']} (trial {source['trial_id']}'s config)"
    return f"trial {source['trial_id']} at epoch {source['epoch']} ({source['chosen']})"


def format_export(result: ExportResult) -> str:
    card, out = result.card, result.out
    check, lat = card["self_check"], card["latency"]

    def size(name: str) -> str:
        n = (out / name).stat().st_size
        return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"

    lines = [
        f"exported {describe_source(card['source'])} to {out}:",
        f"  {ONNX_FILE:<11} {size(ONNX_FILE):>9}  ONNX: onnxruntime, TensorRT, OpenVINO",
        f"  {PT2_FILE:<11} {size(PT2_FILE):>9}  torch.export.load(path).module()",
        f"  {CARD_FILE:<11} {size(CARD_FILE):>9}  the model card: classes, preprocessing, metrics",
        f"  input uint8 RGB [N, 3, {card['image_size']}, {card['image_size']}]; output logits "
        f"[N, {len(card['classes'])}] (softmax: probabilities)",
        f"  self-check on {check['images']}: max |difference| from the PyTorch model's logits "
        f"ONNX {check['max_abs_diff']['onnx']:.2g}, .pt2 {check['max_abs_diff']['pt2']:.2g} "
        f"(tolerance {check['tolerance']:.2g})",
    ]
    for n in LATENCY_BATCHES:
        b = lat[f"batch_{n}"]
        lines.append(
            f"  latency, batch {n}: PyTorch {b['torch']['median_ms']:.2f} ms, onnxruntime "
            f"{b['onnxruntime']['median_ms']:.2f} ms (median; {lat['threads']} CPU threads)"
        )
    test = card["test"]
    if test is not None:
        acc, mp = test["accuracy"], test["macro_precision"]
        lines.append(
            f"  test part ({test['images']} images, evaluation {test['evaluation']}): accuracy "
            f"{acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}], macro precision "
            f"{mp['value']:.3f} [{mp['ci_low']:.3f}, {mp['ci_high']:.3f}] (95 % intervals)"
        )
        if test["warning"]:
            lines.append(f"  WARNING: {test['warning']}")
    else:
        lines.append(f"  test metrics: {card['test_note']}")
    lines.append(f"next: hpsearch predict {out} IMAGES_OR_FOLDERS... --out preds.csv")
    return "\n".join(lines)
