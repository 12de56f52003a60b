"""`scratchlm export gguf RUN OUT.gguf`: one file that llama.cpp, Ollama and LM Studio run as is.

Written with the `gguf` package, llama.cpp's own Python writer. What goes in:

    general.*            architecture (llama or gpt2), name, file type
    <arch>.*             context length, widths, heads, norm epsilon, RoPE base (model/gguf.py)
    tokenizer.ggml.*     byte-level BPE: tokens, types, merges, the pre-tokenizer's name, and
                         the bos / eos / eot / pad ids (tokenizer/gguf.py)
    tokenizer.chat_template   a chat run's template (Jinja), its turns ending at <|end|> (EOT)
    tensors              f32, f16 or q8_0 (blocks of 32 weights sharing one scale). As
                         llama.cpp's converter does, vectors (norms, biases) and the position
                         table stay f32, and a matrix whose rows do not split into blocks of
                         32 falls back from q8_0 to f16.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from scratchlm import runs
from scratchlm.errors import StageError
from scratchlm.io import atomic_path
from scratchlm.model.gguf import gguf_arch, gguf_hparams, gguf_tensors
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.gguf import gguf_vocab
from scratchlm.tokenizer.tokenizer import Tokenizer

TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
ALWAYS_F32 = ("position_embd.weight",)  # llama.cpp's converter keeps it exact too


def tensor_data(name: str, t: torch.Tensor, kind: str) -> tuple[np.ndarray, Any]:
    """The array to write for one tensor, and its GGML type."""
    data = t.detach().cpu().float().contiguous().numpy()
    qtype = TYPES[kind][0]
    if data.ndim < 2 or name in ALWAYS_F32 or qtype == gguf.GGMLQuantizationType.F32:
        return data, gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), qtype
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.quants.QuantError:  # rows not a multiple of the block size
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _write_vocab(w: gguf.GGUFWriter, tok: Tokenizer, n_vocab: int, template: ChatTemplate | None):
    vocab = gguf_vocab(tok, n_vocab)
    w.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    # Our models see no start token: a document starts after <|endoftext|> or at the text.
    w.add_bos_token_id(tok.eot_id)
    w.add_eos_token_id(tok.eot_id)
    w.add_pad_token_id(tok.eot_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if template is not None:
        w.add_eot_token_id(tok.special_tokens[template.end])
        w.add_chat_template(template.to_jinja())
    else:
        w.add_eot_token_id(tok.eot_id)


def export_gguf(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    kind: str = "f32",
    template: ChatTemplate | None = None,
    name: str = "scratchlm",
) -> Path:
    """Write `model` (our GPT) and its tokenizer as one GGUF file; returns its path."""
    if kind not in TYPES:
        raise StageError(f"GGUF type {kind!r}: expected one of {', '.join(TYPES)}")
    cfg = model.cfg
    arch = gguf_arch(cfg)  # a clear error for a model llama.cpp has no architecture for
    if template is not None and template.end not in tokenizer.special_tokens:
        raise StageError(f"the chat template's {template.end} is not a token of the tokenizer")
    sd = model.state_dict()
    out = Path(out)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name)
        w.add_file_type(TYPES[kind][1])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in gguf_hparams(cfg).items():
            if isinstance(value, float):
                w.add_float32(key, value)
            else:
                w.add_uint32(key, value)
        _write_vocab(w, tokenizer, cfg.vocab_size, template)
        for tensor_name, tensor in gguf_tensors(sd, cfg).items():
            data, qtype = tensor_data(tensor_name, tensor, kind)
            w.add_tensor(tensor_name, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def export_run_gguf(run_dir: str | os.PathLike, out: str | os.PathLike, kind: str = "f32") -> Path:
    """`scratchlm export gguf RUN OUT.gguf`: a run's latest checkpoint (or an HF folder)."""
    run_dir = Path(run_dir)
    if runs.is_classifier(run_dir):
        raise StageError(f"{run_dir} is a classifier; GGUF holds language models only")
    loaded = runs.load_model(run_dir)
    template = runs.saved_chat_template(run_dir)  # chat runs (sft, dpo) saved theirs
    return export_gguf(loaded.model, loaded.tokenizer, out, kind, template, run_dir.resolve().name)
