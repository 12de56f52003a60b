"""`scratchlm export hf` and `scratchlm import hf`: folders HF transformers reads as they are.

    export_hf(model, tokenizer, out)    config.json, model.safetensors, generation_config.json,
                                        tokenizer.json + tokenizer_config.json (+ vocab/merges)
    export_run(run, out)                a run's latest checkpoint, as such a folder
    import_run(hf_folder, run)          an HF GPT-2 / Llama folder as a run folder of ours

The mapping itself (names, layouts, configs) is model/hf.py.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from scratchlm import runs
from scratchlm.config import PretrainSettings, Recipe
from scratchlm.errors import StageError
from scratchlm.infer.chat import reply_stop_ids
from scratchlm.io import atomic_write_json, save_safetensors
from scratchlm.model.config import ModelConfig
from scratchlm.model.hf import hf_config, hf_family, hf_state_dict
from scratchlm.tokenizer.formats import export_tokenizer
from scratchlm.tokenizer.tokenizer import BPETokenizer, Tokenizer


def export_hf(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    chat_template: str | None = None,
    labels: list[str] | None = None,
    stop_ids: list[int] | None = None,
) -> list[Path]:
    """Write `model` (our GPT, or a GPTClassifier with its class `labels`) and its tokenizer
    as a folder that `from_pretrained` loads; a chat model's Jinja template goes with the
    tokenizer, so `apply_chat_template` formats conversations as we trained them, and its
    `stop_ids` (every token that ends a reply) go to generation_config.json as its EOS ids, so
    HF `generate` and vLLM stop where `scratchlm chat` does."""
    lm = model.backbone if labels is not None else model
    cfg: ModelConfig = lm.cfg
    family = hf_family(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().float() for k, v in lm.state_dict().items()}
    hf_sd = hf_state_dict(sd, cfg)
    eot = getattr(tokenizer, "eot_id", None)
    config = hf_config(cfg, family, eot)
    if labels is not None:
        # *ForSequenceClassification: the same trunk, and a bias-free `score` layer for a head.
        hf_sd.pop("lm_head.weight", None)
        hf_sd["score.weight"] = model.head.weight.detach().cpu().float()
        kind = (
            "GPT2ForSequenceClassification"
            if family == "gpt2"
            else "LlamaForSequenceClassification"
        )
        config |= {
            "architectures": [kind],
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
            "pad_token_id": eot,  # HF finds each row's last real token through the pad id
        }
    tmp = out / ".model.safetensors.tmp"
    save_safetensors({k: v.contiguous() for k, v in hf_sd.items()}, tmp, metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    atomic_write_json(out / "config.json", config)
    eos = sorted(set(stop_ids or []) | {eot}) if eot is not None else stop_ids
    eos = eos[0] if eos and len(eos) == 1 else eos
    atomic_write_json(out / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eos})
    files = [out / "config.json", out / "model.safetensors", out / "generation_config.json"]
    if isinstance(tokenizer, BPETokenizer):
        files += export_tokenizer(
            tokenizer, out, model_max_length=cfg.block_size, chat_template=chat_template
        )
    return files


# ------------------------------------------------------------------ run folders


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """`scratchlm export hf RUN OUT`: a run's latest checkpoint as an HF transformers folder."""
    run_dir = Path(run_dir)
    if runs.is_classifier(run_dir):
        classifier, tokenizer, labels = runs.load_classifier(run_dir)
        return export_hf(classifier, tokenizer, out_dir, labels=labels)
    if not runs.is_run(run_dir):
        raise StageError(f"{run_dir} is not a run folder (no {runs.CONFIG})")
    loaded = runs.load_model(run_dir)
    template = runs.saved_chat_template(run_dir)
    if template is None:
        return export_hf(loaded.model, loaded.tokenizer, out_dir)
    stops = sorted(reply_stop_ids(template, loaded.tokenizer))
    return export_hf(loaded.model, loaded.tokenizer, out_dir, template.to_jinja(), stop_ids=stops)


def import_run(hf_dir: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """`scratchlm import hf DIR OUT`: an HF GPT-2 / Llama folder as a run folder of ours
    (config.yaml, tokenizer.json, checkpoints/step_000000), ready to generate or fine-tune."""
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if not runs.is_hf_folder(hf_dir):
        raise StageError(f"{hf_dir}: no config.json; expected a folder saved by save_pretrained")
    loaded = runs.load_model(hf_dir)
    cfg = loaded.model.cfg
    if loaded.tokenizer.vocab_size > cfg.vocab_size:
        raise StageError(
            f"{hf_dir}: the tokenizer has {loaded.tokenizer.vocab_size} tokens, the model {cfg.vocab_size}"
        )
    name = run_dir.name
    runs.write_config(run_dir, Recipe(name=name, model=cfg, pretrain=PretrainSettings(name=name)))
    runs.save_tokenizer(run_dir, loaded.tokenizer)
    meta = {"imported_from": str(hf_dir.resolve()), "model": dataclasses.asdict(cfg)}
    runs.save_checkpoint(run_dir, 0, loaded.model, meta)
    return run_dir
