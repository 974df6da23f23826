"""Class predictions for new photos from an exported model folder, with onnxruntime alone.

`hpsearch export` writes a model folder: `model.onnx` (what this module runs), `model.pt2`
(PyTorch's `torch.export` program) and `model.json`, the model card: the classes in output
order, the image size, the input and the preprocessing. This module owns those names and
reads the card. `predict` decodes each file with `prepare`'s own decoder (`decode_shard`: EXIF
orientation, shorter side to S, centre crop S x S) at the card's image size, in batches, runs
the batches through onnxruntime, and turns the logits into probabilities (softmax). A file
that cannot be decoded is skipped with the reason `prepare` would give, and the rest go on.

No torch here, nor anything of the training stack: a deployment needs numpy, Pillow,
simplejpeg and onnxruntime (tests/search/test_predict.py checks that torch stays unimported).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
from tqdm import tqdm

from hpsearch.data_pipeline.decode import REASON_EMPTY, decode_shard, split_error
from hpsearch.data_pipeline.scan import (
    IMG_EXTENSIONS,
    REASON_EXTENSION,
    REASON_HIDDEN,
    REASON_HIDDEN_FOLDER,
    REASON_NO_ACCESS,
)
from hpsearch.rundir import atomic_write, write_parquet

# The model folder `hpsearch export` writes (driver.model_export is the writer).
ONNX_FILE = "model.onnx"  # ONNX, weights inside: onnxruntime, TensorRT, OpenVINO
PT2_FILE = "model.pt2"  # torch.export's ExportedProgram: torch.export.load(path).module()
CARD_FILE = "model.json"  # the model card, written last: it marks the export complete
CARD_FORMAT = 1  # bump when a field the readers use changes meaning
INPUT_NAME = "images"  # uint8 [N, 3, S, S], RGB
OUTPUT_NAME = "logits"  # float32 [N, classes]; softmax gives the probabilities

BATCH_SIZE = 64
TOP_K = 3
OUTPUT_SUFFIXES = (".parquet", ".csv")
SKIPPED_COLUMNS = ["path", "reason", "detail"]


class ModelFolderError(ValueError):
    """A folder that is not an exported model, or an option predict cannot use; the message
    says what to change."""


@dataclass(frozen=True)
class Predictions:
    """One row per predicted file (`table`), and the files skipped with their reasons."""

    table: pd.DataFrame  # path, class, probability, top1_class, top1_probability, ...
    skipped: pd.DataFrame  # path, reason, detail


def read_card(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of an exported model folder; ModelFolderError naming what is missing."""
    folder = Path(model_dir)
    path = folder / CARD_FILE
    if not path.is_file():
        what = "does not exist" if not folder.exists() else f"has no {CARD_FILE}"
        raise ModelFolderError(
            f"{folder} {what}: it is not an exported model; write one with "
            "`hpsearch export RUN_DIR --out DIR`"
        )
    try:
        card = json.loads(path.read_text())
    except ValueError as e:
        raise ModelFolderError(f"{path} is not valid JSON ({e}): export the model again") from None
    missing = [k for k in ("format_version", "classes", "image_size") if k not in card]
    if missing:
        raise ModelFolderError(f"{path} has no {', '.join(missing)}: export the model again")
    if int(card["format_version"]) > CARD_FORMAT:
        raise ModelFolderError(
            f"{path} is format {card['format_version']}, newer than this hpsearch reads "
            f"({CARD_FORMAT}): upgrade hpsearch"
        )
    return card


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, in float64 (stable: the max is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def open_session(path: str | os.PathLike[str], *, threads: int = 0) -> ort.InferenceSession:
    """onnxruntime on the CPU; `threads` intra-op threads (0: onnxruntime's choice)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Classifier:
    """An exported model folder's ONNX file in onnxruntime, with its card's classes."""

    def __init__(self, model_dir: str | os.PathLike[str], *, threads: int = 0) -> None:
        self.card = read_card(model_dir)
        onnx_file = Path(model_dir) / self.card.get("files", {}).get("onnx", ONNX_FILE)
        if not onnx_file.is_file():
            raise ModelFolderError(f"{onnx_file} is missing: export the model again")
        self.session = open_session(onnx_file, threads=threads)
        self.classes: list[str] = [str(c) for c in self.card["classes"]]
        self.image_size = int(self.card["image_size"])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, classes] for uint8 [N, 3, S, S] RGB images."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images)})[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images))


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[dict]]:
    """(image files, skipped entries) under `inputs`: a file is taken as it is named (its
    content is checked when it is decoded); a folder is searched recursively, sorted, for
    files with the extensions `prepare` takes, and every other entry in it is listed as
    skipped with its reason, as `prepare` lists it (hidden ones, other extensions). A path
    that does not exist is a ModelFolderError. Each file once, in the order found."""
    files: list[str] = []
    skipped: list[dict] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(str(path))
        elif path.is_dir():
            _walk(path, files, skipped)
        elif not path.exists():
            raise ModelFolderError(f"{path}: no such file or folder")
        else:
            skipped.append(_skip(str(path), REASON_NO_ACCESS, "not a file or folder"))
    return list(dict.fromkeys(files)), skipped


def _skip(path: str, reason: str, detail: str = "") -> dict:
    return {"path": path, "reason": reason, "detail": detail}


def _walk(folder: Path, files: list[str], skipped: list[dict]) -> None:
    def on_error(exc: OSError) -> None:
        skipped.append(_skip(str(exc.filename or folder), REASON_NO_ACCESS, str(exc)))

    for root, dirs, names in os.walk(folder, onerror=on_error):
        for d in sorted(dirs):
            if d.startswith("."):
                skipped.append(_skip(os.path.join(root, d) + "/", REASON_HIDDEN_FOLDER))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = os.path.join(root, name)
            if name.startswith("."):
                skipped.append(_skip(path, REASON_HIDDEN))
            elif not name.lower().endswith(IMG_EXTENSIONS):
                skipped.append(_skip(path, REASON_EXTENSION))
            else:
                files.append(path)


def _decode(paths: list[str], image_size: int, pool: ThreadPoolExecutor, workers: int):
    """decode_shard over `paths` in `workers` threads (PIL and libjpeg release the GIL)."""
    chunks = [paths[i::workers] for i in range(workers) if paths[i::workers]]
    images = np.zeros((len(paths), 3, image_size, image_size), dtype=np.uint8)
    errors: list[str | None] = [None] * len(paths)
    for i, (pixels, errs) in enumerate(pool.map(lambda c: decode_shard(c, image_size), chunks)):
        images[i::workers] = pixels
        errors[i::workers] = errs
    return images, errors


def predict(
    model_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    top_k: int = TOP_K,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> Predictions:
    """Predict the class of every image file in `inputs` (files and folders) with the model
    in `model_dir`: the most probable class, its probability, and the `top_k` most probable
    classes with theirs (k at most the number of classes)."""
    if top_k < 1:
        raise ModelFolderError(f"--top-k {top_k}: use 1 or more")
    if batch_size < 1:
        raise ModelFolderError(f"--batch-size {batch_size}: use 1 or more")
    model = Classifier(model_dir)
    files, skipped = find_images(inputs)
    k = min(top_k, len(model.classes))
    workers = max(1, min(workers or os.cpu_count() or 1, batch_size))
    classes = np.asarray(model.classes, dtype=object)
    rows: list[pd.DataFrame] = []
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(
            total=len(files), desc="predicting", unit="img", disable=not progress, file=sys.stderr
        ) as bar,
    ):
        for start in range(0, len(files), batch_size):
            batch = files[start : start + batch_size]
            images, errors = _decode(batch, model.image_size, pool, workers)
            ok = [i for i, e in enumerate(errors) if e is None]
            for path, error in zip(batch, errors, strict=True):
                if error is not None:
                    skipped.append(_skip(path, *_reason(path, error)))
            if ok:
                rows.append(
                    _rows([batch[i] for i in ok], model.probabilities(images[ok]), classes, k)
                )
            bar.update(len(batch))
    columns = ["path", "class", "probability"] + [
        f"top{j}_{what}" for j in range(1, k + 1) for what in ("class", "probability")
    ]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    return Predictions(table=table[columns], skipped=pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))


def _reason(path: str, error: str) -> tuple[str, str]:
    """(reason, detail) of a file the decoder refused; an empty file as `prepare` names it."""
    try:
        if os.path.getsize(path) == 0:
            return REASON_EMPTY, ""
    except OSError:
        pass
    return split_error(error)


def _rows(paths: list[str], probs: np.ndarray, classes: np.ndarray, k: int) -> pd.DataFrame:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(probs, order, axis=1)
    out: dict[str, Any] = {"path": paths, "class": classes[order[:, 0]], "probability": top[:, 0]}
    for j in range(k):
        out[f"top{j + 1}_class"] = classes[order[:, j]]
        out[f"top{j + 1}_probability"] = top[:, j]
    return pd.DataFrame(out)


def check_output(out: str | os.PathLike[str]) -> Path:
    """`out` as a path, or ModelFolderError when its extension is not .parquet or .csv."""
    path = Path(out)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ModelFolderError(
            f"--out {out}: name a .parquet or .csv file (e.g. preds.parquet), or leave --out "
            "out to print CSV"
        )
    return path


def write_predictions(table: pd.DataFrame, out: str | os.PathLike[str]) -> Path:
    """Write the predictions as Parquet or CSV, by the extension; replaces the file whole."""
    path = check_output(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        write_parquet(table, path)
    else:
        atomic_write(path, table.to_csv(index=False))
    return path


def format_skipped(skipped: pd.DataFrame) -> str:
    """One line per skipped file: path, reason and detail."""
    lines = [f"skipped {len(skipped)} file(s), with the reasons:"]
    for row in skipped.itertuples(index=False):
        lines.append(f"  {row.path}: {row.reason}" + (f" ({row.detail})" if row.detail else ""))
    return "\n".join(lines)
