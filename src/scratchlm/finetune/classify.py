"""Classification: a linear head on the last real token's hidden state (model/heads.py).

Labels are mapped to indices in sorted order and saved as labels.json beside the weights,
so the head's outputs keep their names. Texts longer than the context keep their *last*
block_size tokens: the last token is the one the head reads, and it should have seen the end.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scratchlm import runs
from scratchlm.config import FinetuneSettings
from scratchlm.errors import StageError
from scratchlm.finetune import records
from scratchlm.finetune.base import Base, write_run_config
from scratchlm.finetune.loop import EpochBatches, fit, save_tuned, total_steps, use_lora
from scratchlm.finetune.summaries import ClassifySummary
from scratchlm.io import atomic_open, atomic_write_json
from scratchlm.model.heads import GPTClassifier
from scratchlm.tokenizer.tokenizer import Tokenizer


def label_ids(train_labels: Sequence[str]) -> dict[str, int]:
    return {label: i for i, label in enumerate(sorted(set(train_labels)))}


def check_labels(labels: Sequence[str], known: dict[str, int], where: str) -> None:
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise StageError(
            f"{where}: label(s) {unknown} never appear in the training data (known: {sorted(known)})"
        )


def balanced_weights(labels: Sequence[int], classes: int) -> torch.Tensor:
    """n / (classes * count): each class contributes equally to the loss."""
    counts = Counter(labels)
    return torch.tensor([len(labels) / (classes * max(counts[c], 1)) for c in range(classes)])


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], block_size: int
) -> tuple[list[list[int]], int]:
    """Token ids of each text (at least one token), and how many were cut to fit."""
    out, cut = [], 0
    for ids in tokenizer.encode_batch(list(texts)):
        ids = ids or [tokenizer.eot_id]
        if len(ids) > block_size:
            ids, cut = ids[-block_size:], cut + 1
        out.append(ids)
    return out, cut


def collate(
    ids: Sequence[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the attention mask of real tokens."""
    T = max(len(x) for x in ids)
    idx = torch.tensor([x + [pad_id] * (T - len(x)) for x in ids], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids], device=device)
    return idx, mask


@torch.no_grad()
def predict(
    model: GPTClassifier, ids: Sequence[list[int]], pad_id: int, batch_size: int = 32
) -> torch.Tensor:
    """Class probabilities (N, classes)."""
    device = next(model.parameters()).device
    probs = []
    for k in range(0, len(ids), batch_size):
        idx, mask = collate(ids[k : k + batch_size], pad_id, device)
        probs.append(model(idx, attention_mask=mask)[0].float().softmax(-1).cpu())
    return torch.cat(probs)


def scores(pred: Sequence[int], gold: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (each class's F1, averaged) and the confusion matrix [gold][pred]."""
    k = len(names)
    confusion = [[0] * k for _ in range(k)]
    for p, g in zip(pred, gold, strict=True):
        confusion[g][p] += 1
    f1s = []
    for c in range(k):
        tp = confusion[c][c]
        predicted = sum(confusion[g][c] for g in range(k))
        actual = sum(confusion[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    n = len(gold)
    return {
        "items": n,
        "accuracy": sum(p == g for p, g in zip(pred, gold, strict=True)) / n if n else 0.0,
        "macro_f1": sum(f1s) / k,
        "f1": dict(zip(names, f1s, strict=True)),
        "confusion": confusion,
    }


def plot_confusion(
    confusion: list[list[int]], names: Sequence[str], title: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1.5))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = max(max(r) for r in confusion) or 1
    for g, row in enumerate(confusion):
        for p, count in enumerate(row):
            ax.text(
                p,
                g,
                str(count),
                ha="center",
                va="center",
                color="white" if count > top / 2 else "black",
            )
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def classify_texts(run_dir: str | Path, texts: Sequence[str]) -> list[dict[str, Any]]:
    """`scratchlm classify`: each text's label and the probability of every class."""
    model, tok, names = runs.load_classifier(run_dir)
    ids, _ = encode_texts(tok, texts, model.backbone.cfg.block_size)
    probs = predict(model, ids, tok.eot_id)
    return [
        {
            "text": t,
            "label": names[int(p.argmax())],
            "probabilities": {n: round(float(v), 4) for n, v in zip(names, p, strict=True)},
        }
        for t, p in zip(texts, probs, strict=True)
    ]


def run(
    s: FinetuneSettings, base: Base, out: Path, device: torch.device, progress: bool
) -> ClassifySummary:
    """Classification: labelled texts -> train / val / test, a head on the base (plus what
    train_layers or LoRA unfreezes); accuracy, macro-F1 and confusion matrices at the end."""
    convert = records.to_labelled(s.text_field, s.label_field)
    train, val, skipped = records.held_out(s, convert)
    if s.test_data:
        test_l = records.load(s.test_data, convert, "finetune.test_data")
        test, skipped[s.test_data] = test_l.examples, test_l.skipped
    else:
        train, test = records.split(train, s.test_fraction, s.seed + 1)
    names_to_id = label_ids([label for _, label in train])
    names = list(names_to_id)
    if len(names) < 2:
        raise StageError(
            f"finetune.data={s.data}: classification needs at least 2 labels, found {names}"
        )
    check_labels([lb for _, lb in val], names_to_id, s.val_data or "the validation split")
    check_labels([lb for _, lb in test], names_to_id, s.test_data or "the test split")
    tok, block = base.tokenizer, base.model.cfg.block_size
    model = GPTClassifier(base.model, len(names))
    choose_trainable(model, s)
    model.to(device)
    data: dict[str, tuple[list[list[int]], list[int]]] = {}
    cut = {}
    for split_name, items in (("train", train), ("val", val), ("test", test)):
        ids, cut[split_name] = encode_texts(tok, [t for t, _ in items], block)
        data[split_name] = (ids, [names_to_id[lb] for _, lb in items])
    train_ids, train_y = data["train"]
    weights = (
        balanced_weights(train_y, len(names)).to(device) if s.class_weights == "balanced" else None
    )
    steps = total_steps(s, len(train_ids))
    order = EpochBatches(len(train_ids), s.batch_size, s.seed)

    def batch_for(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen = order(step)
        idx, mask = collate([train_ids[i] for i in chosen], tok.eot_id, device)
        return idx, mask, torch.tensor([train_y[i] for i in chosen], device=device)

    def loss_of(batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        idx, mask, y = batch
        _, value = model(idx, attention_mask=mask, labels=y, class_weights=weights)
        return value, {}

    def evaluate_split(split_name: str) -> dict[str, Any]:
        ids, gold = data[split_name]
        if not ids:
            return {"items": 0}
        probs = predict(model, ids, tok.eot_id)
        result = scores(probs.argmax(-1).tolist(), gold, names)
        nll = -probs[torch.arange(len(gold)), torch.tensor(gold)].clamp(min=1e-12).log().mean()
        return result | {"loss": round(float(nll), 5)}

    def evaluate(step: int) -> dict[str, Any]:
        r = evaluate_split("val")
        return {k: r[k] for k in ("items", "accuracy", "macro_f1", "loss") if k in r}

    evals = fit(model, steps, batch_for, loss_of, evaluate, s, out / runs.METRICS, progress)
    report = {"labels": names, "val": evaluate_split("val"), "test": evaluate_split("test")}
    for split_name in ("val", "test"):
        if report[split_name]["items"]:
            r = report[split_name]
            title = f"{split_name}: accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}"
            plot_confusion(r["confusion"], names, title, out / f"confusion_{split_name}.png")
    atomic_write_json(out / "report.json", report)
    cfg = model.backbone.cfg
    meta = {"task": "classify", "labels": names, "model": dataclasses.asdict(cfg)}
    save_tuned(out, steps, model, s, base.source, meta, base_prefix="backbone.")
    write_run_config(out, cfg, s)
    runs.save_labels(out, names)
    runs.save_tokenizer(out, tok)
    return ClassifySummary(
        task="classify",
        base=base.source,
        steps=steps,
        labels=names,
        examples={k: len(v[0]) for k, v in data.items()},
        truncated=cut,
        skipped_records=records.skipped_summary(skipped),
        initial=evals[0],
        val={k: report["val"].get(k) for k in ("items", "accuracy", "macro_f1")},
        test={k: report["test"].get(k) for k in ("items", "accuracy", "macro_f1")},
    )


def choose_trainable(model: GPTClassifier, s: FinetuneSettings) -> None:
    if s.lora_rank:
        use_lora(model.backbone, s, [])
        return
    if s.train_layers == "all":
        return
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    if s.train_layers == "last_blocks":
        blocks = model.backbone.blocks
        if s.last_blocks > len(blocks):
            raise StageError(
                f"finetune.last_blocks={s.last_blocks}: the model has {len(blocks)} blocks"
            )
        for module in [*blocks[-s.last_blocks :], model.backbone.ln_f]:
            for p in module.parameters():
                p.requires_grad_(True)
