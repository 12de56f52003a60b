"""The run folder: its layout, and the one place that writes and reads what is in it.

    layout.py       the names, what a folder is, config.yaml, the step folders
    checkpoints.py  writing checkpoints whole and sealed, finding an intact one, weights
    kept.py         runs a re-run kept aside, and finding a LoRA base among them
    models.py       loading a model (ours or HF) with its tokenizer; files beside the weights


    <run>/config.yaml               the exact effective recipe: reproduce or resume from it
          tokenizer.json            a copy, so the folder alone can generate text
          chat_template.json        chat runs (sft, dpo): how conversations become tokens
          labels.json               classification runs: class names in the head's order
          metrics.jsonl, *.png      what training measured
          checkpoints/step_NNNNNN/  model.safetensors    the weights (any tool reads them)
                                    adapter.safetensors  a LoRA fine-tune kept unmerged: the
                                                         adapters; meta.json names the base
                                    state.pt             training state (optimizer, data, RNG)
                                    meta.json            step, validation loss, model settings,
                                                         and the sha256 of every other file
          checkpoints/best.json     the checkpoint with the best validation loss

A re-run never deletes a trained run: the folder is renamed NAME.YYYYMMDD-HHMMSS beside the new
one (`keep_aside`), and a LoRA run finds its base there by checksum if the base was trained again.
Training, fine-tuning, serving, evaluation and export call the functions here, and none of them
knows the layout. `load_model(path)` takes a run of ours or a Hugging Face GPT-2 / Llama folder
(nanochat's checkpoint_manager, litgpt's from_checkpoint). A checkpoint folder is built under a
temporary name and renamed when complete, so a folder named step_* is always whole; the
checksums in its meta.json then tell whether it is still as it was written. Readers take the
newest intact checkpoint and say which newer ones they skipped and why (`intact_checkpoint`).
"""

from __future__ import annotations

from scratchlm.io import checksum_problems, file_checksums
from scratchlm.runs.checkpoints import (
    DamagedCheckpointWarning,
    checkpoint_problem,
    checkpoint_weights,
    clean_leftovers,
    has_training_state,
    intact_checkpoint,
    load_weights,
    read_training_state,
    save_adapter,
    save_checkpoint,
    weights_for_saving,
    write_best,
    write_checkpoint_files,
    write_meta,
)
from scratchlm.runs.kept import find_base, keep_aside, kept_runs, swap_in, weights_sha256
from scratchlm.runs.layout import (
    ADAPTER,
    BEST,
    CHECKPOINTS,
    CHECKSUMS,
    CONFIG,
    HF_CONFIG,
    LABELS,
    META,
    METRICS,
    STATE,
    TOKENIZER,
    WEIGHTS,
    checkpoint_path,
    checkpoints,
    is_classifier,
    is_hf_folder,
    is_run,
    latest_checkpoint,
    model_config,
    read_config,
    read_meta,
    require_model_folder,
    run_settings,
    write_config,
)
from scratchlm.runs.models import (
    LoadedModel,
    chat_template,
    load_classifier,
    load_model,
    save_chat_template,
    save_labels,
    save_tokenizer,
    saved_chat_template,
)

__all__ = [  # the run folder's API: callers write runs.load_model(...), runs.CONFIG ...
    "ADAPTER", "BEST", "CHECKPOINTS", "CHECKSUMS", "CONFIG", "HF_CONFIG", "LABELS", "META",
    "METRICS", "STATE", "TOKENIZER", "WEIGHTS", "DamagedCheckpointWarning", "LoadedModel",
    "chat_template", "checkpoint_path", "checkpoint_problem", "checkpoint_weights",
    "checkpoints", "checksum_problems", "clean_leftovers", "file_checksums", "find_base",
    "has_training_state", "intact_checkpoint", "is_classifier", "is_hf_folder", "is_run",
    "keep_aside", "kept_runs", "latest_checkpoint", "load_classifier", "load_model",
    "load_weights", "model_config", "read_config", "read_meta", "read_training_state",
    "require_model_folder", "run_settings", "save_adapter", "save_chat_template",
    "save_checkpoint", "save_labels", "save_tokenizer", "saved_chat_template", "swap_in",
    "weights_for_saving", "weights_sha256", "write_best", "write_checkpoint_files",
    "write_config", "write_meta",
]  # fmt: skip
