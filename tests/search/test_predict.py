"""`hpsearch predict`: an exported model folder classifies files and folders with prepare's
decoder and onnxruntime, skips what it cannot read with the reason, and never imports torch.
The model here is a small untrained ConvNet exported by the export's own writer (no search:
tests/search/test_model_export.py runs the whole way from a search)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hpsearch import models
from hpsearch.data_pipeline.decode import (
    REASON_CORRUPT,
    REASON_EMPTY,
    REASON_NOT_IMAGE,
    decode_image,
)
from hpsearch.data_pipeline.predict import (
    CARD_FILE,
    CARD_FORMAT,
    Classifier,
    find_images,
    predict,
    softmax,
)
from hpsearch.data_pipeline.scan import REASON_EXTENSION, REASON_HIDDEN
from hpsearch.search.cli import main
from hpsearch.search.driver.model_export import ImageClassifier, write_exported

REPO = Path(__file__).resolve().parents[2]
SIZE = 16
CLASSES = ["cat", "dog", "eel"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    cfg = models.make_config("FlatAlexNet", image_size=SIZE, num_classes=3, width=0.125)
    model = ImageClassifier(models.build(cfg), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)).eval()
    example = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    write_exported(model, example, folder)
    card = {"format_version": CARD_FORMAT, "classes": CLASSES, "image_size": SIZE}
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


def _photo(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def photos(tmp_path) -> Path:
    """Three good images (one in a sub-folder, one a JPEG) and five entries that are not."""
    root = tmp_path / "photos"
    _photo(root / "a.png", 1)
    _photo(root / "sub" / "b.jpg", 2, (60, 90))
    _photo(root / "sub" / "c.png", 3, (16, 16))
    (root / "broken.png").write_bytes((root / "a.png").read_bytes()[:60])  # cut short
    (root / "text.jpg").write_text("not a picture at all")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("an image folder's notes")
    (root / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_predict_skips_what_it_cannot_read_and_goes_on(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["predict", str(model_dir), str(photos), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    preds = pd.read_csv(out)
    good = [str(photos / "a.png"), str(photos / "sub" / "b.jpg"), str(photos / "sub" / "c.png")]
    assert preds["path"].tolist() == good
    assert list(preds.columns) == [
        "path", "class", "probability",
        "top1_class", "top1_probability", "top2_class", "top2_probability",
        "top3_class", "top3_probability",
    ]  # fmt: skip
    # the scores are onnxruntime's on prepare's decoding, softmaxed
    images = np.stack([decode_image(p, SIZE) for p in good])
    probs = softmax(Classifier(model_dir).logits(images))
    np.testing.assert_allclose(preds["probability"], probs.max(1), rtol=1e-6)
    assert preds["class"].tolist() == [CLASSES[i] for i in probs.argmax(1)]
    assert (preds["class"] == preds["top1_class"]).all()
    top = preds[["top1_probability", "top2_probability", "top3_probability"]].to_numpy()
    assert (np.diff(top, axis=1) <= 0).all() and np.allclose(top.sum(1), 1, atol=1e-6)
    # every other entry is listed on stderr with its reason
    reasons = {
        "broken.png": REASON_CORRUPT,
        "text.jpg": REASON_NOT_IMAGE,
        "empty.png": REASON_EMPTY,
        "notes.txt": REASON_EXTENSION,
        ".DS_Store": REASON_HIDDEN,
    }
    assert "skipped 5 file(s)" in err
    for name, reason in reasons.items():
        assert f"{photos / name}: {reason}" in err, name
    assert "predicting" in err  # the progress bar


def test_the_python_api_returns_the_skipped_files_with_their_reasons(model_dir, photos):
    result = predict(model_dir, [photos], top_k=1, batch_size=2, progress=False)
    assert len(result.table) == 3 and "top2_class" not in result.table
    assert set(result.skipped["path"]) == {
        str(photos / n) for n in ("broken.png", "text.jpg", "empty.png", "notes.txt", ".DS_Store")
    }
    assert (result.skipped["reason"] != "").all()


def test_files_and_folders_together_to_parquet_and_stdout(model_dir, photos, tmp_path, capsys):
    one = photos / "a.png"
    out = tmp_path / "p.parquet"
    args = ["predict", str(model_dir), str(one), str(photos / "sub"), str(one)]
    assert main([*args, "--out", str(out), "--top-k", "5"]) == 0
    preds = pd.read_parquet(out)
    assert preds["path"].tolist() == [
        str(one),
        str(photos / "sub/b.jpg"),
        str(photos / "sub/c.png"),
    ]
    assert "top3_class" in preds and "top4_class" not in preds  # k: at most the classes
    capsys.readouterr()
    assert main(args) == 0  # no --out: CSV on stdout, nothing else there
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    pd.testing.assert_frame_equal(printed, preds, check_dtype=False)


def test_nothing_readable_exits_1(model_dir, photos, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_text("no")
    (bad / "y.txt").write_text("no")
    assert main(["predict", str(model_dir), str(bad), "--out", str(tmp_path / "o.csv")]) == 1
    err = capsys.readouterr().err
    assert "no image could be read" in err and f"{bad / 'x.jpg'}: {REASON_NOT_IMAGE}" in err
    assert not (tmp_path / "o.csv").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(model_dir), str(empty)]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{photos}", "{photos}"], "not an exported model"),
        (["{model}", "{photos}/nope.jpg"], "no such file or folder"),
        (["{model}", "{photos}", "--out", "preds.txt"], ".parquet or .csv"),
        (["{model}", "{photos}", "--top-k", "0"], "--top-k 0"),
        (["{model}", "{photos}", "--batch-size", "0"], "--batch-size 0"),
    ],
)
def test_bad_input_exits_2_saying_what_to_change(model_dir, photos, args, message, capsys):
    argv = [a.format(model=model_dir, photos=photos) for a in args]
    assert main(["predict", *argv]) == 2
    assert message in capsys.readouterr().err


def test_find_images_lists_folders_recursively_and_keeps_named_files(photos):
    (photos / ".hidden").mkdir()
    (photos / ".hidden" / "d.png").write_bytes(b"x")
    files, skipped = find_images([photos / "notes.txt", photos])
    assert files[0] == str(photos / "notes.txt")  # named: tried, whatever its extension
    assert str(photos / ".hidden" / "d.png") not in files
    assert {s["path"] for s in skipped} >= {
        str(photos / ".hidden") + "/",
        str(photos / ".DS_Store"),
    }


def test_predict_never_imports_torch(model_dir, photos, tmp_path):
    """A deployment needs onnxruntime, not torch: predict (the module and the verb) runs with
    torch unimported."""
    out = tmp_path / "preds.parquet"
    code = (
        "import sys\n"
        "from hpsearch.data_pipeline.predict import predict\n"
        "from hpsearch.search.cli import main\n"
        f"predict({str(model_dir)!r}, [{str(photos)!r}], progress=False)\n"
        f"assert main(['predict', {str(model_dir)!r}, {str(photos)!r}, '--out', {str(out)!r}]) == 0\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
    assert len(pd.read_parquet(out)) == 3
