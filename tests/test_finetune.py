"""Fine-tuning: SFT masks and packing, LoRA, classification, DPO, bad input, saving and export."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from safetensors.torch import load_file

from scratchlm import runs
from scratchlm.cli import main
from scratchlm.config import FinetuneSettings, ModelConfig
from scratchlm.errors import StageError
from scratchlm.finetune import records, sft
from scratchlm.finetune.classify import classify_texts
from scratchlm.finetune.stage import finetune
from scratchlm.model.gpt import GPT
from scratchlm.pipeline import Workspace, run_pipeline
from scratchlm.tokenizer.chat import ChatTemplate, add_chat_tokens
from scratchlm.tokenizer.tokenizer import BPETokenizer


def settings(**kw) -> FinetuneSettings:
    base = dict(max_steps=20, eval_every=10, lr=3e-3, threads=1, max_new_tokens=8, batch_size=8)
    return FinetuneSettings(**(base | kw))


def make_base(root: Path, **tokenizer) -> Path:
    recipe = tiny_recipe(pretrain={"max_steps": 20}, tokenizer=tokenizer)
    ws = Workspace(root, "tiny")
    run_pipeline(recipe, ws, progress=False)
    return ws.out("pretrain")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("ft"))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def qa_rows(n: int = 40) -> list[dict]:
    rng = random.Random(0)
    words = ["red", "blue", "green", "gold"]
    return [
        {"instruction": f"Name a colour {i}", "output": rng.choice(words) + " is a colour."}
        for i in range(n)
    ]


# --------------------------------------------------------------------------- sft data


def byte_chat_tokenizer() -> BPETokenizer:
    return add_chat_tokens(BPETokenizer([bytes([i]) for i in range(256)], "gpt2"))[0]


def test_prompt_mask_exact_positions():
    tok = byte_chat_tokenizer()
    s = tok.special_tokens
    messages = records.to_messages({"instruction": "Hi", "output": "Yo"})
    ex, cut = sft.encode(tok, ChatTemplate(), messages, max_len=64)
    # ids: <|user|> H i <|end|> <|assistant|> Y o <|end|>   (8 tokens, 7 positions)
    assert ex.inputs == [s["<|user|>"], *b"Hi", s["<|end|>"], s["<|assistant|>"], *b"Yo"]
    assert ex.targets == [-1, -1, -1, -1, ord("Y"), ord("o"), s["<|end|>"]]
    assert not cut


def test_long_conversations_are_cut_and_counted():
    tok = byte_chat_tokenizer()
    messages = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "x" * 50}]
    ex, cut = sft.encode(tok, ChatTemplate(), messages, max_len=10)
    assert cut and len(ex.inputs) == 10 and ex.targets[-1] == ord("x")
    long_prompt = [{"role": "user", "content": "q" * 50}, {"role": "assistant", "content": "a"}]
    assert sft.encode(tok, ChatTemplate(), long_prompt, max_len=10) == (None, True)


def test_packing_keeps_examples_whole_and_separate():
    a = sft.Example([1, 2, 3], [-1, 2, 3])
    b = sft.Example([4, 5, 6, 7], [-1, -1, 6, 7])
    c = sft.Example([8, 9], [9, -1])
    rows = sft.pack([a, b, c], length=8, pad_id=0)
    assert [r.inputs for r in rows] == [[1, 2, 3, 4, 5, 6, 7, 0], [8, 9, 0, 0, 0, 0, 0, 0]]
    assert rows[0].targets == [-1, 2, 3, -1, -1, 6, 7, -1]  # padding is never trained
    assert rows[0].documents == [0, 0, 0, 1, 1, 1, 1, 2]
    assert rows[1].documents[:2] == [0, 0] and set(rows[1].documents[2:]) == {1}


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_a_packed_row_computes_each_example_as_if_alone(position):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=60, block_size=16, n_layer=2, n_head=2, n_embd=16, position=position
    )
    model = GPT(cfg).eval()
    a, b = [5, 9, 2, 7], [3, 3, 8, 1, 4, 6]
    rows = sft.pack([sft.Example(a, a), sft.Example(b, b)], 12, pad_id=0)
    batch = sft.collate(rows, 0, torch.device("cpu"))
    packed, _ = model(batch["inputs"], document_ids=batch["documents"])
    alone_a, _ = model(torch.tensor([a]))
    alone_b, _ = model(torch.tensor([b]))
    torch.testing.assert_close(packed[0, :4], alone_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[0, 4:10], alone_b[0], atol=1e-5, rtol=0)


def test_malformed_records_are_skipped_with_line_numbers(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"instruction": "a", "output": "b"},
            "{not json",
            {"instruction": "a"},
            "",
            {"messages": [{"role": "user", "content": "x"}]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        ],
    )
    loaded = records.load(str(path), records.to_messages, "finetune.data")
    assert len(loaded.examples) == 2
    assert [s.split(":")[0] for s in loaded.skipped] == ["line 2", "line 3", "line 5"]
    assert "no 'output' field" in loaded.skipped[1]


def test_a_record_nested_too_deep_is_skipped_with_its_line(tmp_path):
    nested = "[" * 100_000 + "]" * 100_000
    good = {"instruction": "a", "output": "b"}
    loaded = records.load(str(write_jsonl(tmp_path / "d.jsonl", [good, nested, good])), records.to_messages, "finetune.data")  # fmt: skip
    assert len(loaded.examples) == 2 and [s.split(":")[0] for s in loaded.skipped] == ["line 2"]
    with pytest.raises(StageError, match="not valid JSON"):
        records.load(str(write_jsonl(tmp_path / "d.json", [nested])), records.to_messages, "x")


def test_empty_or_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="no usable record .*line 1"):
        records.load(str(write_jsonl(tmp_path / "e.jsonl", ["[]"])), records.to_messages, "x")
    with pytest.raises(StageError, match="finetune.data=.*nope.jsonl: no such file"):
        records.load(str(tmp_path / "nope.jsonl"), records.to_messages, "finetune.data")


# --------------------------------------------------------------------------- sft runs


def test_sft_trains_saves_reloads_and_exports_with_its_template(base_run, tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    out = tmp_path / "sft"
    summary = finetune(settings(data=str(data)), base_run, out, progress=False)
    assert summary.final_val_loss < summary.initial_val_loss
    assert len(summary.answers) == 2 and summary.added_tokens == []
    assert ChatTemplate.load(out) == ChatTemplate()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if "eval" in e] == [0, 10, 20]
    assert all("samples" in e["eval"] for e in evals if "eval" in e)

    loaded = runs.load_model(out)

    model, tok = loaded.model, loaded.tokenizer
    transformers = pytest.importorskip("transformers")
    from scratchlm.export.hf import export_run

    export_run(out, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    convo = [{"role": "user", "content": "Name a colour 3"}]
    ids, _ = ChatTemplate().render(tok, convo, add_generation_prompt=True)
    hf_ids = hf_tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=True)
    assert list(getattr(hf_ids, "input_ids", hf_ids)) == ids  # a BatchEncoding in transformers 5
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-4, rtol=1e-4)


def test_hf_generate_on_an_exported_chat_run_stops_where_our_chat_does(base_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from scratchlm.config import GenerateSettings
    from scratchlm.export.hf import export_run
    from scratchlm.infer.chat import Chat

    # Short replies, learned well: the model ends each one with <|end|>, not <|endoftext|>.
    rows = [{"instruction": f"Question {i}?", "output": "Yes."} for i in range(40)]
    out = tmp_path / "sft"
    finetune(settings(data=str(write_jsonl(tmp_path / "yes.jsonl", rows)), max_steps=80, lr=1e-2), base_run, out, progress=False)  # fmt: skip
    export_run(out, tmp_path / "hf")
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    loaded = runs.load_model(out)
    tok, template = loaded.tokenizer, runs.saved_chat_template(out)
    assert tok.special_tokens[template.end] in gen["eos_token_id"]

    chat = Chat(loaded.model, tok, template, GenerateSettings(temperature=0, max_new_tokens=40))
    ours, _ = chat.reply("Question 7?", lambda piece: None)
    ids, _ = template.render(tok, [{"role": "user", "content": "Question 7?"}], add_generation_prompt=True)  # fmt: skip
    room = loaded.model.cfg.block_size - len(ids)  # the chat's budget, too
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        generated = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=room)
    new = generated[0, len(ids) :].tolist()
    assert len(new) < room and new[-1] == tok.special_tokens[template.end]  # stopped at <|end|>
    assert tok.decode(new[:-1]) == ours


def test_lora_trains_only_adapters_and_merging_changes_nothing(base_run, tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    s = settings(data=str(data), lora_rank=4, lr=1e-2)
    finetune(s, base_run, tmp_path / "lora", progress=False)
    finetune(
        settings(data=str(data), lora_rank=4, lr=1e-2, merge=True),
        base_run,
        tmp_path / "merged",
        progress=False,
    )
    ckpt = runs.latest_checkpoint(tmp_path / "lora")
    adapter = load_file(str(ckpt / "adapter.safetensors"))
    assert not (ckpt / "model.safetensors").exists()
    assert adapter and all(".lora_" in k for k in adapter)  # nothing else was trained
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if k.endswith("lora_b"))

    base = runs.load_model(base_run).model
    lora = runs.load_model(tmp_path / "lora").model
    merged = runs.load_model(tmp_path / "merged").model
    x = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(lora(x)[0], merged(x)[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(lora(x)[0], base(x)[0])
    frozen = {k: v for k, v in base.state_dict().items() if "attn" not in k}
    for name, value in frozen.items():
        assert torch.equal(merged.state_dict()[name], value), name


def test_chat_tokens_are_added_to_a_tokenizer_without_them(tmp_path):
    base = make_base(tmp_path / "b", special_tokens=["<|endoftext|>"])
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(20))
    summary = finetune(
        settings(data=str(data), lora_rank=4, max_steps=5), base, tmp_path / "o", progress=False
    )
    assert summary.added_tokens == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    loaded = runs.load_model(tmp_path / "o")
    model, tok = loaded.model, loaded.tokenizer
    assert model.cfg.vocab_size == tok.vocab_size == runs.load_model(base).tokenizer.vocab_size + 4
    adapter = load_file(str(runs.latest_checkpoint(tmp_path / "o") / "adapter.safetensors"))
    assert "wte.weight" in adapter  # new rows trained beside the adapters


def test_sft_refuses_data_whose_prompts_fill_the_context(base_run, tmp_path):
    rows = [{"instruction": "word " * 200, "output": "x"}] * 4
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(StageError, match="longer than the context"):
        finetune(settings(data=str(data)), base_run, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()  # nothing half-written


# --------------------------------------------------------------------------- classify


def separable_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    styles = {"sea": ["wave", "salt", "tide", "ship"], "hill": ["rock", "grass", "peak", "goat"]}
    rows = []
    for i in range(n):
        label = "sea" if i % 2 else "hill"
        rows.append({"text": " ".join(rng.choice(styles[label]) for _ in range(8)), "label": label})
    return rows


def test_classification_separates_a_made_up_task_and_exports(base_run, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", separable_rows(120, 1))
    test = write_jsonl(tmp_path / "test.jsonl", separable_rows(40, 2))
    s = settings(
        task="classify",
        data=str(train),
        test_data=str(test),
        max_steps=40,
        class_weights="balanced",
    )
    summary = finetune(s, base_run, tmp_path / "clf", progress=False)
    assert summary.labels == ["hill", "sea"]
    assert summary.test["accuracy"] >= 0.95 and summary.test["items"] == 40
    report = json.loads((tmp_path / "clf" / "report.json").read_text())
    assert sum(map(sum, report["test"]["confusion"])) == 40
    assert (tmp_path / "clf" / "confusion_test.png").stat().st_size > 1000

    result = classify_texts(tmp_path / "clf", ["tide ship salt wave", "goat peak rock"])
    assert [r["label"] for r in result] == ["sea", "hill"]

    transformers = pytest.importorskip("transformers")
    from scratchlm.export.hf import export_run

    export_run(tmp_path / "clf", tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    model, tok, names = runs.load_classifier(tmp_path / "clf")
    assert hf.config.id2label == dict(enumerate(names))
    x = torch.tensor([tok.encode("tide ship goat")])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("train_layers", ["head", "last_blocks"])
def test_classification_freezes_what_it_should(base_run, tmp_path, train_layers):
    train = write_jsonl(tmp_path / "train.jsonl", separable_rows(40, 1))
    s = settings(task="classify", data=str(train), max_steps=3, train_layers=train_layers, lr=1e-2)
    finetune(s, base_run, tmp_path / "clf", progress=False)
    base = runs.load_model(base_run).model
    tuned, _, _ = runs.load_classifier(tmp_path / "clf")
    changed = {
        k
        for k, v in base.state_dict().items()
        if not torch.equal(tuned.backbone.state_dict()[k], v)
    }
    if train_layers == "head":
        assert changed == set()
    else:
        assert changed and all(k.startswith(("blocks.0.", "ln_f.")) for k in changed)


def test_an_unknown_label_in_the_test_file_is_named(base_run, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", separable_rows(20, 1))
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "wave", "label": "desert"}])
    s = settings(task="classify", data=str(train), test_data=str(test))
    with pytest.raises(StageError, match=r"test.jsonl: label\(s\) \['desert'\]"):
        finetune(s, base_run, tmp_path / "clf", progress=False)


def test_classification_reads_csv(base_run, tmp_path):
    path = tmp_path / "d.csv"
    rows = separable_rows(30, 3)
    path.write_text(
        "label,text\n" + "".join(f"{r['label']},{r['text']}\n" for r in rows) + "sea,\n"
    )
    loaded = records.load(str(path), records.to_labelled("text", "label"), "finetune.data")
    assert len(loaded.examples) == 30 and loaded.skipped == ["line 32: 'text' is empty"]


# --------------------------------------------------------------------------- dpo


def test_dpo_with_lora_raises_the_chosen_margin(base_run, tmp_path):
    rng = random.Random(0)
    rows = [
        {"prompt": f"Say a word {i}", "chosen": "yes indeed", "rejected": "no " + rng.choice("abc")}
        for i in range(40)
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    s = settings(task="dpo", data=str(data), lora_rank=4, lr=1e-2, max_steps=30, beta=0.5)
    summary = finetune(s, base_run, tmp_path / "dpo", progress=False)
    first, last = summary.initial, summary.final
    assert abs(first["reward_margin"]) < 1e-4  # the policy starts as its reference
    assert last["reward_margin"] > 0.5 and last["reward_accuracy"] == 1.0, last
    model = runs.load_model(tmp_path / "dpo").model  # adapters over the base, merged for use
    assert model.cfg.vocab_size == runs.load_model(base_run).model.cfg.vocab_size


# --------------------------------------------------------------------------- CLI and pipeline


def test_cli_finetune_and_classify(base_run, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", separable_rows(60, 1))
    out = tmp_path / "clf"
    argv = ["finetune", "classify", str(base_run), "--data", str(train), "--out", str(out), "-q"]
    sets = ["finetune.max_steps=30", "finetune.threads=1", "finetune.lr=3e-3"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert "test: accuracy" in capsys.readouterr().out
    assert main(["classify", str(out), "--text", "wave tide", "--text", "rock goat"]) == 0
    labels = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert labels == ["sea", "hill"]
    assert main(["finetune", "sft", str(base_run), "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "finetune.data=" in capsys.readouterr().err


def test_pipeline_runs_and_caches_the_finetune_stage(tmp_path):
    from scratchlm.pipeline import Workspace, run_pipeline

    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(20))
    recipe = tiny_recipe(pretrain={"max_steps": 10})
    recipe.finetune = settings(data=str(data), max_steps=4)
    ws = Workspace.for_recipe(recipe, tmp_path / "work")
    first = {r.stage: r for r in run_pipeline(recipe, ws, progress=False)}
    assert first["finetune"].ran and first["finetune"].out.name == "tiny-sft"
    assert (first["finetune"].out / "chat_template.json").is_file()
    again = run_pipeline(recipe, ws, progress=False)
    assert not any(r.ran for r in again)
    recipe.finetune = settings(data="")
    assert "finetune" not in [r.stage for r in run_pipeline(recipe, ws, progress=False)]


def test_an_hf_folder_is_a_base_too(base_run, tmp_path):
    from scratchlm.export.hf import export_run

    export_run(base_run, tmp_path / "hf")
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(20))
    s = settings(data=str(data), lora_rank=4, max_steps=5)
    summary = finetune(s, tmp_path / "hf", tmp_path / "o", progress=False)
    assert summary.base["kind"] == "hf"
    tuned = runs.load_model(tmp_path / "o").model  # the adapters applied over the HF weights
    base = runs.load_model(base_run).model
    x = torch.randint(0, 300, (1, 12))
    assert tuned(x)[0].shape == base(x)[0].shape and not torch.allclose(tuned(x)[0], base(x)[0])


def test_epoch_batches_cover_every_item_once_per_epoch_reproducibly():
    from scratchlm.finetune.loop import EpochBatches

    order = EpochBatches(10, 4, seed=3)
    epochs = [[i for step in range(e * 3, e * 3 + 3) for i in order(step)] for e in range(2)]
    assert all(sorted(e) == list(range(10)) for e in epochs) and epochs[0] != epochs[1]
    assert EpochBatches(10, 4, seed=3)(4) == order(4)  # the same seed, the same batches


def test_unmerged_adapters_follow_their_base_by_checksum(tmp_path):
    """A LoRA run keeps only its adapters and the path of its base. When the base is trained
    again, the old one is kept aside, and the adapters are applied to it, found by checksum;
    when no copy of the weights they were trained on is left, loading them is refused."""
    import shutil

    recipe = tiny_recipe(pretrain={"max_steps": 10, "eval_every": 10})
    ws = Workspace(tmp_path / "work", "tiny")
    run_pipeline(recipe, ws, progress=False)
    base, lora = ws.out("pretrain"), tmp_path / "lora"
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    summary = finetune(settings(data=str(data), lora_rank=4, max_steps=3), base, lora, False)
    assert len(summary.base["sha256"]) == 64
    x = torch.randint(0, 100, (1, 8))
    before = runs.load_model(lora).model(x)[0]

    recipe.pretrain.max_steps = 12  # the base is trained again; the old one is kept aside
    run_pipeline(recipe, ws, progress=False)
    (kept,) = runs.kept_runs(base)
    torch.testing.assert_close(runs.load_model(lora).model(x)[0], before, rtol=0, atol=0)

    shutil.rmtree(kept)  # no copy left; other weights where the old checkpoint was
    shutil.copytree(runs.latest_checkpoint(base), base / "checkpoints" / "step_000010")
    with pytest.raises(StageError, match="checksum mismatch"):
        runs.load_model(lora)


def test_finetuning_again_into_a_run_keeps_the_one_there(base_run, tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    args = ["finetune", "sft", str(base_run), "--data", str(data), "--out", str(tmp_path / "ft")]
    args += ["-q", "--set", "finetune.max_steps=2", "--set", "finetune.threads=1"]
    assert main(args) == 0
    first = load_file(str(runs.latest_checkpoint(tmp_path / "ft") / "model.safetensors"))
    assert main([*args, "--set", "finetune.lr=1e-2"]) == 0
    (kept,) = runs.kept_runs(tmp_path / "ft")
    assert f"is kept as {kept}" in capsys.readouterr().out
    again = load_file(str(runs.latest_checkpoint(kept) / "model.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)
    # a bad data file changes nothing: the run there stays where it is
    assert main([*args[:4], str(tmp_path / "missing.jsonl"), *args[5:]]) == 2
    assert runs.kept_runs(tmp_path / "ft") == [kept] and runs.is_run(tmp_path / "ft")


def test_a_short_run_warms_up_for_a_tenth_of_it_at_most():
    """The README's LoRA example is 5 steps: inside a 10-step warmup it never reached its
    learning rate and learned nothing visible."""
    from scratchlm.finetune.loop import lr_at

    s = settings(lr=1e-3, warmup_steps=10)
    assert lr_at(0, 5, s) == pytest.approx(1e-3)  # no warmup in a 5-step run
    assert lr_at(0, 50, s) == pytest.approx(1e-3 / 5) and lr_at(4, 50, s) == pytest.approx(1e-3)
    assert lr_at(9, 1000, s) == pytest.approx(1e-3)  # a long run: the setting as it is
    assert lr_at(0, 1000, s) == pytest.approx(1e-4)
