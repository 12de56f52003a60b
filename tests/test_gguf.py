"""GGUF export, read back with llama.cpp's own reader (the `gguf` package), recomputed in
numpy with llama.cpp's RoPE convention, and, where llama-cpp-python is installed (its own venv,
bench/llama_cpp_worker.py), run in llama.cpp itself and compared token for token with ours."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from pydoc_data.topics import topics

import gguf
import numpy as np
import pytest
import torch

from scratchlm.cli import main
from scratchlm.config import ModelConfig, TokenizerSettings, build
from scratchlm.errors import StageError
from scratchlm.export.gguf import export_gguf
from scratchlm.infer.generate import Row, generate_rows
from scratchlm.infer.sampling import Sampling
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.formats import bytes_to_unicode, hf_merges
from scratchlm.tokenizer.tokenizer import BPETokenizer, CharTokenizer
from scratchlm.tokenizer.train import train_tokenizer

_worker = Path(__file__).parents[1] / "bench" / "llama_cpp_worker.py"
_spec = importlib.util.spec_from_file_location("llama_cpp_worker", _worker)
llama_cpp_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llama_cpp_worker)
needs_llama_cpp = pytest.mark.skipif(
    llama_cpp_worker.llama_cpp_python() is None,
    reason=f"llama-cpp-python is not installed: {llama_cpp_worker.INSTALL}",
)

MODELS = {  # preset, extra settings: both llama.cpp archs and their variants
    "llama-gqa": ("llama-tiny", {}),
    "llama-mqa-bias-tied": ("llama-tiny", {"n_kv_head": 1, "bias": True, "tie_embeddings": True}),
    "gpt2": ("gpt2-tiny", {}),
    "gpt2-nobias-untied": ("gpt2-tiny", {"bias": False, "tie_embeddings": False}),
}
TEXTS = [
    "The for statement is used to iterate over the elements of a sequence.",
    "x = 1\n\n    y = [i ** 2 for i in range(10)]\n",
    "Hello, world! 12345 6789 don't WON'T they'll",
    "élan café — ünïcode ✓ 😀 日本語",
    "   leading spaces and trailing ones   ",
    "tabs\tand\r\nCRLF\r\n",
    "<|endoftext|> is plain text here",
    "",
]


def train(pattern: str) -> BPETokenizer:
    texts = list(topics.values())[:40]
    return train_tokenizer(
        texts, TokenizerSettings(vocab_size=600, pattern=pattern), progress=False
    )


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return train("gpt4")


@pytest.fixture(scope="module")
def tok_gpt2() -> BPETokenizer:
    return train("gpt2")


def make_model(name: str, vocab_size: int, seed: int = 0) -> GPT:
    preset, extra = MODELS[name]
    torch.manual_seed(seed)
    cfg = build(ModelConfig, {"preset": preset, "vocab_size": vocab_size, "block_size": 128, "n_layer": 2, **extra})  # fmt: skip
    model = GPT(cfg).eval()
    with torch.no_grad():  # random norms and biases, and sharper logits than at initialisation
        for n, p in model.named_parameters():
            if n.endswith("bias") or "ln" in n:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith("weight") else 0.0))
            else:
                p.mul_(3)
    return model


def read(path: Path) -> tuple[dict, dict]:
    """(metadata {key: value}, tensors {name: (float32 array in torch's shape, type name)})."""
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # ggml lists dimensions innermost first
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        tensors[t.name] = (values.astype(np.float32), t.tensor_type.name)
    return fields, tensors


def ours_from_gguf(tensors: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our state dict rebuilt from the file, undoing llama.cpp's layout independently."""
    t = {k: v for k, (v, _) in tensors.items()}

    def halves(w: np.ndarray, heads: int) -> np.ndarray:  # adjacent RoPE pairs -> half-split
        d = w.shape[0] // heads
        return w.reshape(heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    sd = {"wte.weight": t["token_embd.weight"], "ln_f.weight": t["output_norm.weight"]}
    sd["lm_head.weight"] = t.get("output.weight", t["token_embd.weight"])
    if "position_embd.weight" in t:
        sd["wpe.weight"] = t["position_embd.weight"]
        sd["ln_f.bias"] = t["output_norm.bias"]
    for i in range(cfg.n_layer):
        b, o = f"blk.{i}.", f"blocks.{i}."
        if cfg.position == "learned":
            parts = {"ln_1": "attn_norm", "attn.qkv": "attn_qkv", "attn.proj": "attn_output", "ln_2": "ffn_norm", "mlp.fc": "ffn_up", "mlp.proj": "ffn_down"}  # fmt: skip
            for ours, theirs in parts.items():
                for s in ("weight", "bias"):
                    sd[f"{o}{ours}.{s}"] = t[f"{b}{theirs}.{s}"]
            continue
        sd[f"{o}ln_1.weight"], sd[f"{o}ln_2.weight"] = t[f"{b}attn_norm.weight"], t[f"{b}ffn_norm.weight"]  # fmt: skip
        for s in ("weight", "bias") if cfg.bias else ("weight",):
            q, k = (
                halves(t[f"{b}attn_q.{s}"], cfg.n_head),
                halves(t[f"{b}attn_k.{s}"], cfg.kv_heads),
            )
            sd[f"{o}attn.qkv.{s}"] = np.concatenate([q, k, t[f"{b}attn_v.{s}"]])
            sd[f"{o}attn.proj.{s}"] = t[f"{b}attn_output.{s}"]
            sd[f"{o}mlp.fc.{s}"] = np.concatenate([t[f"{b}ffn_gate.{s}"], t[f"{b}ffn_up.{s}"]])
            sd[f"{o}mlp.proj.{s}"] = t[f"{b}ffn_down.{s}"]
    return sd


@pytest.mark.parametrize("name", list(MODELS))
def test_f32_file_holds_every_weight_under_llama_cpps_names(name, tok, tmp_path):
    model = make_model(name, tok.vocab_size + 5)  # rows past the tokenizer: placeholders
    path = export_gguf(model, tok, tmp_path / "m.gguf", "f32")
    fields, tensors = read(path)
    arch = fields["general.architecture"]
    assert arch == ("gpt2" if name.startswith("gpt2") else "llama")
    known = {
        gguf.TENSOR_NAMES[t].format(bid=i) + suffix
        for t in gguf.MODEL_TENSORS[
            gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.GPT2
        ]  # fmt: skip
        for i in range(model.cfg.n_layer)
        for suffix in (".weight", ".bias")
    }
    assert set(tensors) <= known  # every name is one llama.cpp's arch defines
    assert all(kind == "F32" for _, kind in tensors.values())
    rebuilt = ours_from_gguf(tensors, model.cfg)
    sd = model.state_dict()
    for key, value in sd.items():
        if key.endswith("bias") and key not in rebuilt:
            continue
        expected = value.numpy() if key in rebuilt or model.cfg.bias else None
        if expected is not None:
            assert np.array_equal(rebuilt[key], expected), key
    if not model.cfg.bias and arch == "gpt2":  # llama.cpp's gpt2 needs biases: zeros
        assert not rebuilt["blocks.0.attn.qkv.bias"].any()


def test_llama_logits_recomputed_from_the_file_with_llama_cpps_rope(tok, tmp_path):
    """The file's q/k rows, rotated in llama.cpp's way (adjacent pairs), give our logits: the
    RoPE reordering is right without llama.cpp at hand."""
    model = make_model("llama-gqa", tok.vocab_size)
    cfg = model.cfg
    _, tensors = read(export_gguf(model, tok, tmp_path / "m.gguf"))
    t = {k: v.astype(np.float64) for k, (v, _) in tensors.items()}
    ids = np.array(tok.encode(TEXTS[0])[:24])
    T, d, heads, kv = len(ids), cfg.head_dim, cfg.n_head, cfg.kv_heads

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * w

    def rope_adjacent(x):  # (T, heads, d): ggml's "normal" rope mode rotates (x[2i], x[2i+1])
        theta = np.arange(T)[:, None] * cfg.rope_theta ** (-np.arange(0, d, 2) / d)
        cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
        return out

    x = t["token_embd.weight"][ids]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        h = rms(x, t[b + "attn_norm.weight"])
        q = rope_adjacent((h @ t[b + "attn_q.weight"].T).reshape(T, heads, d))
        k = rope_adjacent((h @ t[b + "attn_k.weight"].T).reshape(T, kv, d))
        v = (h @ t[b + "attn_v.weight"].T).reshape(T, kv, d)
        k, v = k.repeat(heads // kv, axis=1), v.repeat(heads // kv, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
        att = np.exp(np.where(causal, att, -np.inf) - att.max(-1, keepdims=True))
        y = np.einsum("hqk,khd->qhd", att / att.sum(-1, keepdims=True), v).reshape(T, -1)
        x = x + y @ t[b + "attn_output.weight"].T
        h = rms(x, t[b + "ffn_norm.weight"])
        gate, up = h @ t[b + "ffn_gate.weight"].T, h @ t[b + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ t[b + "ffn_down.weight"].T
    logits = rms(x, t["output_norm.weight"]) @ t["output.weight"].T
    with torch.no_grad():
        ours = model(torch.tensor(ids)[None])[0][0].double().numpy()
    assert np.abs(logits - ours).max() <= 1e-4 * np.abs(ours).max()


def test_q8_0_and_f16_stay_within_their_rounding(tok, tmp_path):
    model = make_model("gpt2", tok.vocab_size + 8)
    exact = read(export_gguf(model, tok, tmp_path / "f32.gguf", "f32"))[1]
    for kind in ("q8_0", "f16"):
        _, tensors = read(export_gguf(model, tok, tmp_path / f"{kind}.gguf", kind))
        for name, (values, qtype) in tensors.items():
            x = exact[name][0]
            if x.ndim == 1 or name == "position_embd.weight":
                assert qtype == "F32" and np.array_equal(values, x), name  # kept exact
                continue
            assert qtype == kind.upper(), name
            if kind == "f16":
                assert np.allclose(values, x, rtol=2**-11, atol=6e-8), name
                continue
            # q8_0: blocks of 32 share d = max|x| / 127, stored as f16; |error| <= d/2 + f16's
            blocks, got = x.reshape(-1, 32), values.reshape(-1, 32)
            d = np.abs(blocks).max(axis=1, keepdims=True) / 127
            bound = d * (0.5 + 127 * 2**-11) + 1e-12
            assert (np.abs(got - blocks) <= bound).all(), name
            assert np.abs(got - blocks).max() > 0  # it really is quantized
    narrow = GPT(build(ModelConfig, {"preset": "llama-tiny", "vocab_size": tok.vocab_size, "n_embd": 48}))  # fmt: skip
    _, tensors = read(export_gguf(narrow, tok, tmp_path / "narrow.gguf", "q8_0"))
    assert tensors["blk.0.attn_q.weight"][1] == "F16"  # rows of 48 are not blocks of 32


def test_metadata_describes_model_tokenizer_and_chat(tok, tok_gpt2, tmp_path):
    model = make_model("llama-gqa", tok.vocab_size + 3)
    cfg, template = model.cfg, ChatTemplate()
    path = export_gguf(model, tok, tmp_path / "m.gguf", "q8_0", template, name="my-run")
    fields, _ = read(path)
    expected = {
        "general.architecture": "llama",
        "general.name": "my-run",
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_Q8_0),
        "llama.context_length": cfg.block_size,
        "llama.embedding_length": cfg.n_embd,
        "llama.block_count": cfg.n_layer,
        "llama.feed_forward_length": cfg.hidden,
        "llama.attention.head_count": cfg.n_head,
        "llama.attention.head_count_kv": cfg.kv_heads,
        "llama.rope.dimension_count": cfg.head_dim,
        "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.bos_token_id": tok.eot_id,
        "tokenizer.ggml.eos_token_id": tok.eot_id,
        "tokenizer.ggml.padding_token_id": tok.eot_id,
        "tokenizer.ggml.eot_token_id": tok.special_tokens["<|end|>"],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": template.to_jinja(),
    }
    for key, value in expected.items():
        assert fields[key] == value, key
    assert fields["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == cfg.vocab_size
    spell = bytes_to_unicode()
    for i, token in tok.vocab.items():
        assert tokens[i] == "".join(spell[b] for b in token) and types[i] == 1
    for text, i in tok.special_tokens.items():
        assert tokens[i] == text and types[i] == 3  # CONTROL
    assert tokens[-1] == f"[PAD{cfg.vocab_size - 1}]" and types[-1] == 5  # UNUSED
    merges = fields["tokenizer.ggml.merges"]
    assert merges == [f"{''.join(spell[b] for b in a)} {''.join(spell[b] for b in c)}" for a, c in hf_merges(tok)]  # fmt: skip
    base = read(export_gguf(model, tok_gpt2, tmp_path / "base.gguf"))[0]  # a base model
    assert base["tokenizer.ggml.eot_token_id"] == tok_gpt2.eot_id
    assert "tokenizer.chat_template" not in base
    assert base["tokenizer.ggml.pre"] == "gpt-2"  # GPT-2's split pattern


def test_what_llama_cpp_cannot_run_is_refused_with_the_reason(tok, tmp_path):
    model = make_model("llama-gqa", tok.vocab_size)
    custom = BPETokenizer(tok.vocab, r"\w+|\s+|[^\w\s]+", tok.special_tokens)
    with pytest.raises(StageError, match="custom pattern.*tokenizer.pattern=gpt4"):
        export_gguf(model, custom, tmp_path / "x.gguf")
    with pytest.raises(StageError, match="byte-level BPE"):
        export_gguf(model, CharTokenizer("abc"), tmp_path / "x.gguf")
    with pytest.raises(StageError, match="GGUF type 'q4'"):
        export_gguf(model, tok, tmp_path / "x.gguf", "q4")
    odd = GPT(build(ModelConfig, {"preset": "llama-tiny", "vocab_size": tok.vocab_size, "qk_norm": True}))  # fmt: skip
    with pytest.raises(StageError, match="qk_norm"):
        export_gguf(odd, tok, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_exports_a_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "tiny.gguf"
    assert main(["export", "gguf", str(tiny_run), str(out), "--type", "q8_0"]) == 0
    assert str(out) in capsys.readouterr().out
    fields, tensors = read(out)
    assert fields["general.name"] == tiny_run.name
    assert fields["general.architecture"] == "gpt2"
    assert {kind for _, kind in tensors.values()} == {"Q8_0", "F32"}
    assert main(["export", "hf", str(tiny_run), str(tmp_path / "hf"), "--type", "q8_0"]) == 2


# ------------------------------------------------------------------ in llama.cpp itself


def our_greedy(model: GPT, prompt: list[int], n: int, stop: frozenset[int]) -> tuple[list[int], bool]:  # fmt: skip
    row = Row(prompt, n, Sampling(temperature=0), stop_ids=stop)
    for _ in generate_rows(model, None, [row], model.cfg.vocab_size):
        pass
    return row.tokens, row.finish_reason == "stop"


def decisive_steps(model: GPT, prompt: list[int], tokens: list[int], margin: float) -> int:
    """How many greedy steps in a row had a best token ahead of the second by `margin`: two
    implementations that round differently may only disagree after that."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens]))[0][0, len(prompt) - 1 :]
    top2 = logits.topk(2, dim=-1).values
    close = ((top2[:, 0] - top2[:, 1]) < margin).nonzero()
    return int(close[0]) if len(close) else len(tokens) + 1


@needs_llama_cpp
@pytest.mark.parametrize("name, pattern", [("llama-gqa", "gpt4"), ("gpt2-nobias-untied", "gpt2")])
def test_llama_cpp_tokenizes_and_generates_as_we_do(name, pattern, tok, tok_gpt2, tmp_path):
    tok = tok if pattern == "gpt4" else tok_gpt2
    model = make_model(name, tok.vocab_size)
    path = export_gguf(model, tok, tmp_path / "m.gguf")
    prompts = [tok.encode(t) for t in TEXTS[:4]] + [tok.encode(t)[:3] for t in TEXTS[:2]]
    jobs = [{"kind": "tokenize", "text": t} for t in TEXTS]
    jobs += [{"kind": "greedy", "ids": p, "max_new": 24} for p in prompts]
    results = llama_cpp_worker.run_llama_cpp(path, jobs, n_ctx=128, threads=1, f32_cache=True)
    for text, got in zip(TEXTS, results, strict=False):
        assert got["ids"] == tok.encode(text), text
    stop = frozenset({tok.eot_id, tok.special_tokens["<|end|>"]})
    compared = 0
    for prompt, got in zip(prompts, results[len(TEXTS) :], strict=True):
        ids, stopped = our_greedy(model, prompt, 24, stop)
        # A random model has near-ties (llama.cpp's gpt2 GELU reads an fp16 table): the texts
        # must agree up to the first step whose top two logits are within 1e-3.
        sure = decisive_steps(model, prompt, ids, margin=1e-3)
        assert got["ids"][:sure] == ids[:sure]
        if sure > len(ids):
            assert (got["ids"], got["stopped"]) == (ids, stopped)
        compared += min(sure, len(ids))
    assert compared >= 24 * len(prompts) // 2  # most of it was compared


@needs_llama_cpp
def test_llama_cpp_chats_with_our_template_and_stops_at_end(tok, tmp_path):
    """A model made to end its reply with <|end|> after a few tokens: llama.cpp's chat (the
    file's Jinja template) writes the same reply and stops there."""
    template = ChatTemplate()
    end = tok.special_tokens[template.end]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    prompt, _ = template.render(tok, messages, add_generation_prompt=True)
    stop = frozenset({tok.eot_id, end})
    for seed in range(20):  # a random model whose greedy reply ends at <|end|> within 12 tokens
        model = make_model("llama-gqa", tok.vocab_size, seed)
        with torch.no_grad():
            model.lm_head.weight[end] *= 4
        reply, stopped = our_greedy(model, prompt, 12, stop)
        if stopped and reply and tok.eot_id not in reply:
            break
    else:
        pytest.fail("no seed gives a reply that ends at <|end|>")
    path = export_gguf(model, tok, tmp_path / "chat.gguf", template=template)
    job = {"kind": "chat", "messages": messages, "max_new": 12}
    (got,) = llama_cpp_worker.run_llama_cpp(path, [job], n_ctx=128, f32_cache=True)
    assert got["finish_reason"] == "stop"
    assert got["prompt_tokens"] == len(prompt)
    # llama.cpp prints no control token (a random reply may hold a reserved one) and drops
    # the bytes of a character left incomplete
    shown = [t for t in reply if t not in tok.special_tokens.values()]
    assert got["text"] == tok.decode_bytes(shown).decode("utf-8", errors="ignore")
