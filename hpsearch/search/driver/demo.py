"""The built-in demo: scikit-learn's handwritten digits (1,797 real 8×8 scans, 10 classes)
written as an image folder, then a real search over it with `experiments/demo.yaml`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from hpsearch.search.experiment.files import packaged_path

# The packaged demo experiment (package data of `experiments`, so it is found after a plain
# `pip install` as well as in the repository).
DEMO_EXPERIMENT: Path = packaged_path("demo")


def write_digits(root: str | Path) -> Path:
    """Write the digits as grayscale PNGs, `root/<digit>/<index>.png`. A complete folder from
    an earlier call is left as it is (so the cache is reused)."""

    root = Path(root)
    digits = load_digits()
    if root.is_dir() and sum(1 for _ in root.glob("*/*.png")) == len(digits.target):
        return root
    for label in range(10):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    for i, (img, label) in enumerate(zip(images, digits.target, strict=True)):
        path = root / str(label) / f"{i:04d}.png"
        if not path.exists():
            Image.fromarray(img, mode="L").save(path)
    return root
