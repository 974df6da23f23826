"""`hpsearch export` end to end: a one-trial search on the small image folder, its export, and
the two files loaded in a fresh interpreter that never imports hpsearch (onnxruntime for the
ONNX file, torch.export.load for the .pt2), agreeing with `hpsearch predict`, with the PyTorch
model and with the 15-line example of docs/guides/using-the-model.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from hpsearch import models
from hpsearch.data_pipeline.decode import decode_image
from hpsearch.data_pipeline.predict import CARD_FILE, ONNX_FILE, PT2_FILE, softmax
from hpsearch.search.cli import main
from hpsearch.search.driver import model_export
from hpsearch.search.driver.model_export import ImageClassifier
from hpsearch.search.experiment.space import model_config

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "guides" / "using-the-model.md"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(ray_session, tmp_path_factory, small_folder, cache_root) -> SimpleNamespace:
    """A one-trial search (1 epoch at 16 px) and its export, before any `final`."""
    tmp = tmp_path_factory.mktemp("export")
    args = [
        "run",
        "demo",
        "--name",
        "one",
        f"--data={small_folder}",
        f"--storage={tmp}",
        *("--set", f"data.cache={cache_root}", "--set", "data.image_size=16"),
        *("--set", "train.epochs=1", "--set", "resources.cpus=1", "--set", "resources.gpus=0"),
        *("--set", "search.num_trials=1", "--set", "search.space.arch=[FlatAlexNet]"),
        *("--set", "search.space.width=[0.125]", "--set", "search.space.batchnorm=[true]"),
        "-q",
    ]
    assert main(args) == 0
    run_dir, out = tmp / "one", tmp / "model"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    card = json.loads((out / CARD_FILE).read_text())
    trial_id = pd.read_parquet(run_dir / "trials.parquet")["trial_id"].iloc[0]
    return SimpleNamespace(run_dir=run_dir, out=out, card=card, trial_id=trial_id, tmp=tmp)


def _held_out(card: dict, folder: Path, cache_root: Path) -> list[str]:
    """The test part's image files of the export's data (held out from every trial)."""
    fp = card["data"]["fingerprint"][:16]
    (cache,) = cache_root.glob(f"{folder.name}-{card['image_size']}px-{fp}")
    manifest = pd.read_parquet(cache / "manifest.parquet")
    return [str(folder / p) for p in manifest.loc[manifest["split"] == "test", "path"]]


def _pytorch_logits(exported: SimpleNamespace, images: np.ndarray) -> np.ndarray:
    """The trial's checkpoint in hpsearch's own model, behind the card's normalisation."""
    card = exported.card
    state = torch.load(exported.run_dir / card["source"]["file"], weights_only=True)
    cfg = model_config(
        card["config"], image_size=card["image_size"], num_classes=len(card["classes"])
    )
    net = models.build(cfg)
    net.load_state_dict(state["model"])
    norm = card["normalization"]
    model = ImageClassifier(net, tuple(norm["mean"]), tuple(norm["std"])).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(images)).numpy()


def test_the_files_run_without_hpsearch_and_agree_with_predict_and_pytorch(
    exported, small_folder, cache_root, tmp_path
):
    card, out = exported.card, exported.out
    paths = _held_out(card, small_folder, cache_root)
    assert len(paths) >= 3
    preds_file = tmp_path / "preds.parquet"
    assert main(["predict", str(out), *paths, "--out", str(preds_file)]) == 0
    preds = pd.read_parquet(preds_file)
    assert preds["path"].tolist() == paths

    images = np.stack([decode_image(p, card["image_size"]) for p in paths])
    np.save(tmp_path / "images.npy", images)
    code = (
        "import json, sys\n"
        "import numpy as np, onnxruntime as ort, torch\n"
        "x = np.load('images.npy')\n"
        f"session = ort.InferenceSession({str(out / ONNX_FILE)!r}, "
        "providers=['CPUExecutionProvider'])\n"
        "onnx = session.run(['logits'], {'images': x})[0]\n"
        f"program = torch.export.load({str(out / PT2_FILE)!r}).module()\n"
        "with torch.inference_mode():\n"
        "    pt2 = program(torch.from_numpy(x)).numpy()\n"
        "one = session.run(['logits'], {'images': x[:1]})[0]  # any batch size\n"
        "np.savez('logits.npz', onnx=onnx, pt2=pt2, one=one)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'hpsearch')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # hpsearch never imported
    logits = np.load(tmp_path / "logits.npz")

    reference = _pytorch_logits(exported, images)
    tolerance = card["self_check"]["tolerance"]
    assert np.abs(logits["onnx"] - reference).max() <= tolerance
    assert np.abs(logits["pt2"] - reference).max() <= tolerance
    np.testing.assert_allclose(logits["one"], logits["onnx"][:1], atol=1e-6)
    probs = softmax(logits["onnx"])
    assert preds["class"].tolist() == [card["classes"][i] for i in reference.argmax(1)]
    np.testing.assert_allclose(preds["probability"], probs.max(1), rtol=1e-6)

    # the guide's onnxruntime-only example gives the same classes and probabilities
    (example,) = re.findall(r"```python\n(# predict\.py .*?)```", GUIDE.read_text(), flags=re.S)
    lines = [
        ln
        for ln in example.splitlines()
        if ln.strip() and not ln.startswith(("#", "import", "from"))
    ]
    assert len(lines) <= 16  # "a 15-line example" (and its imports), as ruff formats it
    (tmp_path / "predict.py").write_text(example)
    done = subprocess.run(
        [sys.executable, "predict.py", str(out), *paths],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    printed = [line.rsplit(" ", 2) for line in done.stdout.strip().splitlines()]
    assert [p for p, _, _ in printed] == paths
    assert [c for _, c, _ in printed] == preds["class"].tolist()
    np.testing.assert_allclose([float(v) for *_, v in printed], preds["probability"], atol=1e-4)


def test_the_card_says_what_a_user_needs(exported, small_folder, cache_root):
    card = exported.card
    assert card["format_version"] == 1 and card["hpsearch_version"]
    assert (
        card["source"] | {"kind": "trial", "trial_id": exported.trial_id, "epoch": 1}
        == (card["source"])
    )
    assert card["classes"] == ["class_0", "class_1", "class_2"] and card["image_size"] == 16
    assert card["input"]["dtype"] == "uint8" and card["input"]["shape"] == ["N", 3, 16, 16]
    assert card["input"]["channels"] == "RGB"
    assert card["output"]["kind"].startswith("logits")
    assert any("centre" in step for step in card["preprocessing"]["before_the_model"])
    assert card["normalization"]["from"] == "the training images'"
    cfg = model_config(card["config"], image_size=16, num_classes=3)
    assert (card["model"]["params"], card["model"]["macs"]) == tuple(models.cost(cfg))
    for batch in ("batch_1", "batch_64"):
        for runtime in ("torch", "onnxruntime"):
            assert card["latency"][batch][runtime]["median_ms"] > 0
    assert card["latency"]["threads"] >= 1 and card["latency"]["processor"]
    assert card["test"] is None and "hpsearch final" in card["test_note"]
    assert 0 <= card["validation"]["val_accuracy"] <= 1
    (cache,) = cache_root.glob(f"{small_folder.name}-16px-*{card['data']['fingerprint'][:16]}")
    assert (
        card["data"]["fingerprint"] == json.loads((cache / "meta.json").read_text())["fingerprint"]
    )
    check = card["self_check"]
    assert "test part" in check["images"]
    assert max(check["max_abs_diff"].values()) <= check["tolerance"]
    assert check["tolerance"] == pytest.approx(
        model_export.ATOL + model_export.RTOL * check["max_abs_logit"]
    )


def test_export_refuses_what_it_cannot_use(exported, tmp_path, capsys):
    run_dir = str(exported.run_dir)
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["export", run_dir, "--trial", "nope", "--out", str(tmp_path / "m")]) == 2
    assert "no such trial" in (err := capsys.readouterr().err) and exported.trial_id in err
    assert main(["export", run_dir, "--out", str(exported.out)]) == 2
    assert "--force" in capsys.readouterr().err
    # a trial whose folder has no checkpoint (it ended before its first epoch did)
    copy = tmp_path / "copy"
    shutil.copytree(exported.run_dir, copy)
    (copy / "trial_empty").mkdir()
    (copy / "trial_empty" / "params.json").write_text(json.dumps(exported.card["config"]))
    assert main(["export", str(copy), "--trial", "empty", "--out", str(tmp_path / "m")]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_run_named_by_a_relative_path_exports(exported, monkeypatch, capsys):
    monkeypatch.chdir(exported.tmp)
    assert main(["export", exported.run_dir.name, "--out", "relative", "--trial",
                 str(exported.trial_id)]) == 0  # fmt: skip
    card = json.loads((exported.tmp / "relative" / CARD_FILE).read_text())
    assert card["source"]["file"].startswith(f"trial_{exported.trial_id}/checkpoint_")


def test_a_failed_self_check_writes_nothing(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model_export, "ATOL", -1.0)  # no difference can pass
    out = tmp_path / "m"
    assert main(["export", str(exported.run_dir), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "self-check failed" in err and "tolerance" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


def test_the_final_model_is_exported_with_its_test_metrics(exported, tmp_path, capsys):
    run_dir = exported.run_dir
    assert main(["final", str(run_dir), "--trial", exported.trial_id, "--epochs", "1"]) == 0
    out = tmp_path / "final-model"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    assert "test part" in capsys.readouterr().out
    card = json.loads((out / CARD_FILE).read_text())
    assert card["source"]["kind"] == "final" and card["source"]["evaluation"] == 1
    assert card["source"]["file"] == "final/model-1.pt"
    final = pd.read_parquet(run_dir / "final.parquet").iloc[-1]
    test = card["test"]
    assert test["images"] == final["test_images"] and test["warning"] is None
    for metric in ("accuracy", "macro_precision"):
        m = test[metric]
        assert m["value"] == pytest.approx(final[metric])
        assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1
    assert [c["class"] for c in test["per_class"]] == card["classes"]
    assert "validation" not in card and "test_note" not in card
    # --trial still exports the search's checkpoint
    out2 = tmp_path / "trial-model"
    assert main(["export", str(run_dir), "--trial", exported.trial_id, "--out", str(out2)]) == 0
    assert json.loads((out2 / CARD_FILE).read_text())["source"]["kind"] == "trial"
