"""`scratchlm finetune {sft,classify,dpo}`: from a base model and a data file to a tuned run.

Each task reads its records, holds out validation (and, for classify, test) examples,
decides what trains (everything, the head, the last blocks, or LoRA adapters), then hands
the loop three functions. The run folder is built under a temporary name and appears only
when complete.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from scratchlm.config import FinetuneSettings
from scratchlm.errors import StageError
from scratchlm.finetune import classify, dpo, records, sft
from scratchlm.finetune.base import Base, grow_vocab, load_base, run_config
from scratchlm.finetune.loop import fit, save_tuned, total_steps, use_lora
from scratchlm.io import atomic_dir, atomic_write_json, atomic_write_text
from scratchlm.tokenizer.chat import ChatTemplate, add_chat_tokens
from scratchlm.train.loop import resolve_device, set_threads


def finetune(
    s: FinetuneSettings, base_path: str | Path, run_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    if not s.data:
        raise StageError(
            "finetune.data is not set: give a .jsonl/.json/.csv file or a builtin: set"
        )
    device = resolve_device(s.device)
    set_threads(s.threads)
    base = load_base(base_path)
    with atomic_dir(Path(run_dir)) as out:
        torch.manual_seed(s.seed)
        summary = TASKS[s.task](s, base, out, device, progress)
        atomic_write_json(out / "summary.json", summary)
    return summary


def _held_out(s: FinetuneSettings, convert: Any) -> tuple[list, list, dict[str, list[str]]]:
    """Training examples, validation examples, and the records skipped in each file."""
    data = records.load(s.data, convert, "finetune.data")
    skipped = {s.data: data.skipped}
    if s.val_data:
        val = records.load(s.val_data, convert, "finetune.val_data")
        skipped[s.val_data] = val.skipped
        return data.examples, val.examples, skipped
    train, held = records.split(data.examples, s.val_fraction, s.seed)
    return train, held, skipped


def _skipped_summary(skipped: dict[str, list[str]]) -> dict[str, Any]:
    return {src: {"count": len(v), "examples": v[:5]} for src, v in skipped.items() if v}


def _chat_model(base: Base) -> tuple[Any, list[str]]:
    """The tokenizer with chat tokens, and the model grown to cover them."""
    tok, added = add_chat_tokens(base.tokenizer)
    grow_vocab(base.model, tok.vocab_size)
    return tok, added


def _vocab_params(model: torch.nn.Module, added: list[str]) -> list[torch.nn.Parameter]:
    """With LoRA, the embedding rows of newly added tokens must still learn: train the
    embedding and output matrices in full when tokens were added."""
    return [model.wte.weight, model.lm_head.weight] if added else []


def _save_chat_run(
    out: Path,
    model: Any,
    tok: Any,
    template: ChatTemplate,
    s: FinetuneSettings,
    steps: int,
    meta: dict,
    base: Base,
) -> None:
    save_tuned(out, steps, model, s, base.source, meta | {"model": dataclasses.asdict(model.cfg)})
    atomic_write_text(out / "config.yaml", run_config(model.cfg, s))
    tok.save(out / "tokenizer.json")
    template.save(out)


def _sample_conversations(
    s: FinetuneSettings, val: list[list[dict[str, str]]]
) -> list[list[dict[str, str]]]:
    """The fixed prompts answered at each evaluation."""
    if s.sample_prompts:
        return [[{"role": "user", "content": p}] for p in s.sample_prompts]
    convs = []
    for messages in val[:2]:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        convs.append(messages[:last])
    return convs


def _answers(evals: list[dict[str, Any]]) -> list[dict[str, str]]:
    before, after = evals[0]["samples"], evals[-1]["samples"]
    return [
        {"prompt": b["prompt"], "before": b["answer"], "after": a["answer"]}
        for b, a in zip(before, after, strict=True)
    ]


# --------------------------------------------------------------------------- sft


def _sft(
    s: FinetuneSettings, base: Base, out: Path, device: torch.device, progress: bool
) -> dict[str, Any]:
    tok, added = _chat_model(base)
    model, template = base.model, ChatTemplate()
    block = model.cfg.block_size
    train, val, skipped = _held_out(s, records.to_messages)

    def encode_all(convs: list) -> tuple[list[sft.Example], int, int]:
        examples, cut, dropped = [], 0, 0
        for messages in convs:
            ex, was_cut = sft.encode(tok, template, messages, block)
            cut += was_cut
            if ex is None:
                dropped += 1
            else:
                examples.append(ex)
        return examples, cut, dropped

    train_ex, cut, dropped = encode_all(train)
    val_ex, val_cut, val_dropped = encode_all(val)
    if not train_ex:
        raise StageError(
            f"finetune.data={s.data}: every prompt is longer than the context "
            f"(model.block_size={block} tokens) after templating"
        )
    pad = tok.eot_id
    rows = sft.pack(train_ex, block, pad) if s.packing else sft.pad_rows(train_ex)
    val_rows = sft.pack(val_ex, block, pad) if s.packing else sft.pad_rows(val_ex)
    if s.lora_rank:
        use_lora(model, s, _vocab_params(model, added))
    model.to(device)
    steps = total_steps(s, len(rows))
    per_epoch = max(1, -(-len(rows) // s.batch_size))
    prompts = _sample_conversations(s, val)

    def batch_for(step: int) -> dict[str, torch.Tensor]:
        epoch, k = divmod(step, per_epoch)
        return sft.collate(sft.batches(rows, s.batch_size, s.seed, epoch)[k], pad, device)

    def evaluate(step: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if val_rows:
            result["val_loss"] = round(sft.eval_loss(model, val_rows, s.batch_size, pad, device), 5)
        result["samples"] = [
            {
                "prompt": p[-1]["content"],
                "answer": sft.reply(model, tok, template, p, s.max_new_tokens),
            }
            for p in prompts
        ]
        return result

    evals = fit(
        model,
        steps,
        batch_for,
        lambda b: (sft.loss(model, b), {}),
        evaluate,
        s,
        out / "metrics.jsonl",
        progress,
    )
    final = evals[-1].get("val_loss")
    _save_chat_run(out, model, tok, template, s, steps, {"task": "sft", "val_loss": final}, base)
    return {
        "task": "sft",
        "base": base.source,
        "steps": steps,
        "examples": {"train": len(train_ex), "val": len(val_ex)},
        "rows": {"train": len(rows), "val": len(val_rows)},
        "truncated": {"train": cut, "val": val_cut},
        "dropped_prompt_too_long": {"train": dropped, "val": val_dropped},
        "skipped_records": _skipped_summary(skipped),
        "added_tokens": added,
        "lora": s.lora_rank > 0,
        "initial_val_loss": evals[0].get("val_loss"),
        "final_val_loss": final,
        "answers": _answers(evals),
    }


# --------------------------------------------------------------------------- classify


def _classify(
    s: FinetuneSettings, base: Base, out: Path, device: torch.device, progress: bool
) -> dict[str, Any]:
    convert = records.to_labelled(s.text_field, s.label_field)
    train, val, skipped = _held_out(s, convert)
    if s.test_data:
        test_l = records.load(s.test_data, convert, "finetune.test_data")
        test, skipped[s.test_data] = test_l.examples, test_l.skipped
    else:
        train, test = records.split(train, s.test_fraction, s.seed + 1)
    names_to_id = classify.label_ids([label for _, label in train])
    names = list(names_to_id)
    if len(names) < 2:
        raise StageError(
            f"finetune.data={s.data}: classification needs at least 2 labels, found {names}"
        )
    classify.check_labels([lb for _, lb in val], names_to_id, s.val_data or "the validation split")
    classify.check_labels([lb for _, lb in test], names_to_id, s.test_data or "the test split")
    tok, block = base.tokenizer, base.model.cfg.block_size
    model = classify.GPTClassifier(base.model, len(names))
    _choose_trainable(model, s)
    model.to(device)
    data: dict[str, tuple[list[list[int]], list[int]]] = {}
    cut = {}
    for split_name, items in (("train", train), ("val", val), ("test", test)):
        ids, cut[split_name] = classify.encode_texts(tok, [t for t, _ in items], block)
        data[split_name] = (ids, [names_to_id[lb] for _, lb in items])
    train_ids, train_y = data["train"]
    weights = (
        classify.balanced_weights(train_y, len(names)).to(device)
        if s.class_weights == "balanced"
        else None
    )
    steps = total_steps(s, len(train_ids))
    per_epoch = max(1, -(-len(train_ids) // s.batch_size))

    def batch_for(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import random

        epoch, k = divmod(step, per_epoch)
        order = list(range(len(train_ids)))
        random.Random(s.seed * 1_000_003 + epoch).shuffle(order)
        chosen = order[k * s.batch_size : (k + 1) * s.batch_size]
        idx, mask = classify.collate([train_ids[i] for i in chosen], tok.eot_id, device)
        return idx, mask, torch.tensor([train_y[i] for i in chosen], device=device)

    def loss_of(batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        idx, mask, y = batch
        _, value = model(idx, attention_mask=mask, labels=y, class_weights=weights)
        return value, {}

    def evaluate_split(split_name: str) -> dict[str, Any]:
        ids, gold = data[split_name]
        if not ids:
            return {"items": 0}
        probs = classify.predict(model, ids, tok.eot_id)
        result = classify.scores(probs.argmax(-1).tolist(), gold, names)
        nll = -probs[torch.arange(len(gold)), torch.tensor(gold)].clamp(min=1e-12).log().mean()
        return result | {"loss": round(float(nll), 5)}

    def evaluate(step: int) -> dict[str, Any]:
        r = evaluate_split("val")
        return {k: r[k] for k in ("items", "accuracy", "macro_f1", "loss") if k in r}

    evals = fit(model, steps, batch_for, loss_of, evaluate, s, out / "metrics.jsonl", progress)
    report = {"labels": names, "val": evaluate_split("val"), "test": evaluate_split("test")}
    for split_name in ("val", "test"):
        if report[split_name]["items"]:
            r = report[split_name]
            title = f"{split_name}: accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}"
            classify.plot_confusion(
                r["confusion"], names, title, out / f"confusion_{split_name}.png"
            )
    atomic_write_json(out / "report.json", report)
    cfg = model.backbone.cfg
    meta = {"task": "classify", "labels": names, "model": dataclasses.asdict(cfg)}
    save_tuned(out, steps, model, s, base.source, meta, base_prefix="backbone.")
    atomic_write_text(out / "config.yaml", run_config(cfg, s))
    atomic_write_json(out / classify.LABELS_FILE, {"labels": names})
    tok.save(out / "tokenizer.json")
    return {
        "task": "classify",
        "base": base.source,
        "steps": steps,
        "labels": names,
        "examples": {k: len(v[0]) for k, v in data.items()},
        "truncated": cut,
        "skipped_records": _skipped_summary(skipped),
        "initial": evals[0],
        "val": {k: report["val"].get(k) for k in ("items", "accuracy", "macro_f1")},
        "test": {k: report["test"].get(k) for k in ("items", "accuracy", "macro_f1")},
    }


def _choose_trainable(model: classify.GPTClassifier, s: FinetuneSettings) -> None:
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


# --------------------------------------------------------------------------- dpo


def _dpo(
    s: FinetuneSettings, base: Base, out: Path, device: torch.device, progress: bool
) -> dict[str, Any]:
    tok, added = _chat_model(base)
    model, template = base.model, ChatTemplate()
    block = model.cfg.block_size
    train, val, skipped = _held_out(s, records.to_preference)

    def encode_all(items: list) -> tuple[list[dpo.Pair], int]:
        pairs, cut = [], 0
        for prompt, chosen, rejected in items:
            pair, was_cut = dpo.encode(tok, template, prompt, chosen, rejected, block)
            cut += was_cut
            if pair is not None:
                pairs.append(pair)
        return pairs, cut

    train_pairs, cut = encode_all(train)
    val_pairs, _ = encode_all(val)
    if not train_pairs:
        raise StageError(
            f"finetune.data={s.data}: every prompt is longer than the context ({block} tokens)"
        )
    model.to(device)
    pad = tok.eot_id
    model.eval()
    dpo.add_reference(model, train_pairs + val_pairs, pad, s.batch_size)
    if s.lora_rank:
        use_lora(model, s, _vocab_params(model, added))
    steps = total_steps(s, len(train_pairs))
    per_epoch = max(1, -(-len(train_pairs) // s.batch_size))
    prompts = [[{"role": "user", "content": p}] for p in s.sample_prompts] or [
        p for p, _, _ in val[:2]
    ]

    def batch_for(step: int) -> list[dpo.Pair]:
        import random

        epoch, k = divmod(step, per_epoch)
        order = list(range(len(train_pairs)))
        random.Random(s.seed * 1_000_003 + epoch).shuffle(order)
        return [train_pairs[i] for i in order[k * s.batch_size : (k + 1) * s.batch_size]]

    @torch.no_grad()
    def evaluate(step: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if val_pairs:
            result = {
                k: round(v, 5)
                for k, v in dpo.evaluate(model, val_pairs, s.beta, pad, s.batch_size).items()
            }
        result["samples"] = [
            {
                "prompt": p[-1]["content"],
                "answer": sft.reply(model, tok, template, p, s.max_new_tokens),
            }
            for p in prompts
        ]
        return result

    evals = fit(
        model,
        steps,
        batch_for,
        lambda b: dpo.loss(model, b, s.beta, pad),
        evaluate,
        s,
        out / "metrics.jsonl",
        progress,
    )
    _save_chat_run(
        out,
        model,
        tok,
        template,
        s,
        steps,
        {"task": "dpo", "val_loss": evals[-1].get("val_loss")},
        base,
    )
    return {
        "task": "dpo",
        "base": base.source,
        "steps": steps,
        "pairs": {"train": len(train_pairs), "val": len(val_pairs)},
        "truncated": cut,
        "skipped_records": _skipped_summary(skipped),
        "added_tokens": added,
        "initial": {k: v for k, v in evals[0].items() if k != "samples"},
        "final": {k: v for k, v in evals[-1].items() if k != "samples"},
        "answers": _answers(evals),
    }


TASKS = {"sft": _sft, "classify": _classify, "dpo": _dpo}


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())
