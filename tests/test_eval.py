"""Evaluation: perplexity and bits per byte, the sliding window, multiple choice, intervals, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

from scratchlm import runs
from scratchlm.cli import main
from scratchlm.config import EvalSettings, ModelConfig
from scratchlm.errors import StageError
from scratchlm.eval.choice import Item, encode_pair, load_items, score_items, with_examples
from scratchlm.eval.evaluate import evaluate
from scratchlm.eval.perplexity import perplexity, token_logprobs, windows
from scratchlm.eval.report import compare
from scratchlm.eval.stats import bootstrap_ci, paired_difference, wilson
from scratchlm.eval.tasks import cloze, shuffle
from scratchlm.model.gpt import GPT
from scratchlm.pipeline import Workspace, run_stage
from scratchlm.tokenizer.tokenizer import CharTokenizer


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on a shared 2-core machine are far slower than one for these tiny models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- perplexity


def constant_model(log_p: torch.Tensor, block_size: int = 16) -> GPT:
    """A real GPT whose next-token distribution is exp(log_p) whatever the input: every token
    embeds to ones, the blocks add nothing, RMSNorm (eps 0) of ones is ones, and the head's
    first column is log_p, so the logits are log_p exactly."""
    cfg = ModelConfig(vocab_size=len(log_p), block_size=block_size, n_layer=1, n_head=1, n_embd=4,
                      norm="rmsnorm", norm_eps=0.0, position="none", tie_embeddings=False)  # fmt: skip
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if name.startswith("wte") or "ln" in name else 0.0)
        model.lm_head.weight[:, 0] = log_p
    return model


def test_perplexity_of_a_known_distribution_is_the_analytic_value():
    tok = CharTokenizer("abcdefg")  # 7 characters + <|endoftext|> = 8 tokens
    p = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05], dtype=torch.float64)
    model = constant_model(p.log().float())
    text = "abacabadabacabaeabacabadabacabafgg" * 2  # 68 tokens: several windows of 16
    ids = tok.encode(text)
    result = perplexity(model, tok, [ids], stride=5)
    analytic = math.exp(-sum(math.log(p[i]) for i in ids) / len(ids))
    assert result.tokens == len(ids) == 68
    assert result.to_dict()["perplexity"] == pytest.approx(analytic, rel=1e-6)
    assert perplexity(model, tok, [ids, ids], max_tokens=100).tokens == 100  # cut exactly


def test_bits_per_byte_by_hand():
    # p(a) = 1/2, p(é) = 1/4, p(€) = 1/8, p(eot) = 1/8: a costs 1 bit, é 2 bits, € 3 bits.
    tok = CharTokenizer("aé€")
    p = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 8])
    model = constant_model(p.log())
    text = "aé€a"  # 1 + 2 + 3 + 1 = 7 bits, over 1 + 2 + 3 + 1 = 7 UTF-8 bytes
    result = perplexity(model, tok, [tok.encode(text)]).to_dict()
    assert result["bytes"] == 7 and result["tokens"] == 4
    assert result["bits_per_byte"] == pytest.approx(1.0, abs=1e-6)
    assert result["perplexity"] == pytest.approx(2 ** (7 / 4), rel=1e-6)


def random_model(block_size: int = 32, position: str = "learned") -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                      position=position, init_std=0.3)  # fmt: skip
    return GPT(cfg).eval()


def test_sliding_window_equals_full_context_scoring_when_the_text_fits():
    model = random_model(block_size=32)
    ids = torch.randint(50, (33,)).tolist()  # 32 inputs: exactly one context
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0][0].double(), -1)
    expected = full[torch.arange(32), torch.tensor(ids[1:])]
    for stride in (1, 7, 16, 32):
        got = token_logprobs(model, ids, stride=stride)
        assert torch.allclose(got, expected, atol=1e-5)
    # Longer than the context: the windows matter, and a smaller stride gives more context.
    long = torch.randint(50, (100,)).tolist()
    assert not torch.allclose(token_logprobs(model, long, 32), token_logprobs(model, long, 4))


@pytest.mark.parametrize("n, window, stride", [(2, 8, 4), (9, 8, 4), (100, 16, 5), (50, 16, 16)])
def test_windows_score_every_token_once_with_enough_context(n, window, stride):
    scored = []
    for k, (begin, end, first) in enumerate(windows(n, window, stride)):
        assert end - begin - 1 <= window
        scored += range(first, end)
        if k:  # after the first window, every new token sees >= window - stride tokens
            assert first - begin >= window - stride
    assert scored == list(range(1, n))


# --------------------------------------------------------------------------- multiple choice

LETTERS = "abcdefgh"


def trained_copy_model() -> tuple[GPT, CharTokenizer]:
    """A 1-layer model trained (real AdamW steps) on lines like 'cccc cccc': after the space,
    the letter before it comes again. Only attention to the context can tell which."""
    tok = CharTokenizer(LETTERS + " \n")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(150):
        rows = []
        for _ in range(16):
            text = "".join(f"{c * 4} {c * 4}\n" for c in rng.choice(list(LETTERS), 4))
            rows.append(tok.encode(text[:33]))
        batch = torch.tensor(rows)
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def copy_items(n: int = 24) -> list[Item]:
    rng = np.random.default_rng(1)
    items = []
    for _ in range(n):
        letters = rng.choice(list(LETTERS), 3, replace=False)
        choices = [c * 4 for c in letters]
        items.append(Item(f"{letters[0] * 4} {letters[0] * 4}\n{letters[1] * 4}", choices, 1))
    return items


def test_multiple_choice_picks_the_answer_of_a_model_trained_to_prefer_it():
    model, tok = trained_copy_model()
    items = copy_items()
    scores = score_items(model, tok, items, batch_size=5)
    assert sum(scores.correct) == len(items) and sum(scores.correct_norm) == len(items)
    torch.manual_seed(1)
    untrained = GPT(model.cfg).eval()
    assert sum(score_items(untrained, tok, items).correct) < 0.8 * len(items)


def test_few_shot_prompts_are_solved_items_of_the_task_picked_by_the_seed():
    items = [Item(f"Question {i}:", ["yes", "no"], i % 2) for i in range(10)]
    shots = with_examples(items, 2, seed=5)
    assert shots == with_examples(items, 2, seed=5) != with_examples(items, 2, seed=6)
    solved = [it.context + " " + it.choices[it.answer] for it in items]
    for i, (item, shot) in enumerate(zip(items, shots, strict=True)):
        examples = shot.context.removesuffix(item.context).split("\n\n")[:-1]
        assert len(examples) == 2 and solved[i] not in examples
        assert all(ex in solved for ex in examples)
    with pytest.raises(StageError, match="few_shot=10"):
        with_examples(items, 10, seed=0)


def test_encode_pair_moves_context_spaces_to_the_continuation_like_lm_eval():
    tok = CharTokenizer("ab ")
    assert encode_pair(tok, "ab ", "a") == (tok.encode("ab"), tok.encode(" a"))
    assert encode_pair(tok, "", "ab") == ([tok.eot_id], tok.encode("ab"))


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_loaders_read_the_public_formats_with_lm_evals_prompts(tmp_path):
    hs = {"activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "he",
          "endings": ["bakes a [title] cake.", "sings."], "label": 0}  # fmt: skip
    (item,), _ = load_items(str(write_lines(tmp_path / "hs.jsonl", [hs])))
    assert item.context == "Baking: A man mixes flour. He"
    assert item.choices == ["bakes a. cake.", "sings."] and item.answer == 0
    arc_ai2 = {"question": {"stem": "Sky?", "choices": [{"text": "red", "label": "A"}, {"text": "blue", "label": "B"}]}, "answerKey": "B"}  # fmt: skip
    arc_hf = {"question": "Sky?", "choices": {"text": ["red", "blue"], "label": ["1", "2"]}, "answerKey": "2"}  # fmt: skip
    items, _ = load_items(str(write_lines(tmp_path / "arc.jsonl", [arc_ai2, arc_hf])))
    assert [(i.context, i.choices, i.answer) for i in items] == [("Question: Sky?\nAnswer:", ["red", "blue"], 1)] * 2  # fmt: skip
    write_lines(tmp_path / "valid.jsonl", [{"goal": "Open a jar", "sol1": "twist", "sol2": "eat"}])
    (tmp_path / "valid-labels.lst").write_text("0\n")
    (item,), _ = load_items(str(tmp_path / "valid.jsonl"))
    assert (item.context, item.choices, item.answer) == ("Question: Open a jar\nAnswer:", ["twist", "eat"], 0)  # fmt: skip
    (tmp_path / "mmlu.csv").write_text('"2+2?",3,4,5,6,B\n')
    mmlu_hf = {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}
    (a,), _ = load_items(str(tmp_path / "mmlu.csv"))
    (b,), _ = load_items(str(write_lines(tmp_path / "mmlu.jsonl", [mmlu_hf])))
    assert a == b and a.context == "2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:" and a.choices == list("ABCD")  # fmt: skip


def test_malformed_lines_are_skipped_and_counted_and_an_empty_task_is_an_error(tmp_path):
    good = {"context": "1 + 1 =", "choices": ["2", "3"], "answer": 0}
    path = write_lines(tmp_path / "t.jsonl", [good, "{not json", {"context": "x"}, good | {"answer": 5}, "", good])  # fmt: skip
    items, skipped = load_items(str(path))
    assert len(items) == 2 and skipped == [2, 3, 4]
    nested = "[" * 100_000 + "]" * 100_000  # deeper than the JSON parser goes
    items, skipped = load_items(str(write_lines(tmp_path / "n.jsonl", [good, nested, good])))
    assert len(items) == 2 and skipped == [2]
    with pytest.raises(StageError, match=r"bad\.jsonl: no valid item \(1 malformed line\(s\), first at line 1\)"):  # fmt: skip
        load_items(str(write_lines(tmp_path / "bad.jsonl", ["[1, 2]"])))
    with pytest.raises(StageError, match="no such file"):
        load_items(str(tmp_path / "missing.jsonl"))


def test_builtin_tasks_are_made_from_text_alone():
    from pydoc_data.topics import topics

    texts = list(topics.values())[:30]
    a, b = cloze(texts, 50, seed=1), cloze(texts, 50, seed=1)
    assert a == b and len(a) == 50 and cloze(texts, 50, seed=2) != a
    for item in a:
        real = item.choices[item.answer]
        assert len(item.choices) == 4 == len(set(item.choices))
        assert any(item.context + real in t for t in texts)  # the true continuation
    posts = [f"Post {i} says {i * 7} in {i + 3} words." for i in range(20)]
    assert len(cloze(posts, 5, seed=0)) == 5  # short documents are read as one text
    with pytest.raises(StageError, match="at least 30 words"):
        cloze(["Too short."], 5, seed=0)
    assert len({it.id for it in cloze(texts, 500, seed=1)}) == 500  # no item twice
    for item in shuffle(texts, 50, seed=1):
        real, fake = item.choices[item.answer], item.choices[1 - item.answer]
        assert sorted(real.split()) == sorted(fake.split()) and real != fake


# --------------------------------------------------------------------------- statistics


def test_wilson_intervals_cover_the_truth_at_the_stated_rate():
    rng = np.random.default_rng(0)
    for p, n in [(0.25, 40), (0.5, 100), (0.85, 300)]:
        ks = rng.binomial(n, p, size=4000)
        cover = np.mean([lo <= p <= hi for lo, hi in (wilson(int(k), n) for k in ks)])
        assert 0.93 <= cover <= 0.975, (p, n, cover)


def test_paired_bootstrap_covers_the_true_difference_at_the_stated_rate():
    # Items are right or wrong for both models together: P(both)=.5, (A only)=.1, (B only)=.2.
    rng = np.random.default_rng(1)
    outcomes = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    covered = 0
    sims = 200
    for s in range(sims):
        pairs = outcomes[rng.choice(4, size=150, p=[0.5, 0.1, 0.2, 0.2])]
        r = paired_difference(pairs[:, 0], pairs[:, 1], resamples=1000, seed=s)
        covered += r["ci"][0] <= 0.1 <= r["ci"][1]
    assert 0.9 <= covered / sims <= 0.99
    lo, hi = bootstrap_ci([0.0, 1.0] * 50, resamples=2000)
    assert lo < 0.5 < hi and hi - lo < 0.25


def task(correct: list[int]) -> dict:
    return {"acc": np.mean(correct), "acc_norm": np.mean(correct), "correct": correct,
            "correct_norm": correct, "item_ids": [str(i) for i in range(len(correct))]}  # fmt: skip


def test_compare_says_whether_a_difference_is_larger_than_the_noise():
    a = [1] * 30 + [0] * 70
    b_big = [1] * 90 + [0] * 10
    b_small = [0, 1] + a[2:]  # two items swapped: same accuracy
    big, small = (compare({"tasks": {"t": task(a)}}, {"tasks": {"t": task(b)}}) for b in (b_big, b_small))  # fmt: skip
    assert big[0]["significant"] and big[0]["difference"] == pytest.approx(0.6)
    assert big[0]["test"] == "paired bootstrap"
    assert not small[0]["significant"]
    other = task(b_big) | {"item_ids": ["x"] * 100}  # other items: an unpaired test
    assert compare({"tasks": {"t": task(a)}}, {"tasks": {"t": other}})[0]["test"].startswith("two-proportion")  # fmt: skip


# --------------------------------------------------------------------------- runs and the CLI


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("work"), "tiny")
    for stage in ("curate", "tokenizer", "tokenize", "pretrain"):
        run_stage(stage, tiny_recipe(pretrain={"max_steps": 20}), ws, progress=False)
    return ws


def test_eval_command_writes_json_and_markdown(run, tmp_path, capsys):
    items = write_lines(tmp_path / "mine.jsonl", [{"context": "The", "choices": [" for", " if"], "answer": 0}, "oops"])  # fmt: skip
    run_dir = run.out("pretrain")
    assert main(["eval", str(run_dir), "--task", "cloze", "--task", str(items), "--set", "eval.max_items=40"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    result = json.loads((run_dir / "eval.json").read_text())
    assert "| cloze | 40 |" in out and "bits per byte" in out
    assert (run_dir / "eval.md").read_text() in out
    assert result["tasks"]["cloze"]["items"] == 40 and result["tasks"][str(items)]["skipped_lines"] == 1  # fmt: skip
    lo, hi = result["tasks"]["cloze"]["acc_ci"]
    assert lo <= result["tasks"]["cloze"]["acc"] <= hi
    assert result["perplexity"]["source"] == [str(run.out("tokenize"))]
    # The same weights twice, each evaluated afresh (the copy's eval.json is removed, and the
    # settings differ from the saved ones): --compare pairs the items, finds no difference.
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "eval.json").unlink()
    argv = ["eval", "--compare", str(run_dir), str(copy), "--task", "cloze"]
    argv += ["--text", str(run.out("tokenize"))]  # the copy has no tokens folder beside it
    assert main(argv + ["--set", "eval.max_items=30"]) == 0
    out = capsys.readouterr().out
    assert "within the noise" in out and "paired bootstrap" in out
    assert json.loads((copy / "eval.json").read_text())["tasks"]["cloze"]["items"] == 30
    assert main(["eval", str(run_dir), "--task", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err


def test_text_file_perplexity_and_settings_are_checked(run, tmp_path, capsys):
    text = tmp_path / "held.txt"
    text.write_text("The for statement is used to iterate over the elements of a sequence. " * 20)
    args = ["eval", str(run.out("pretrain")), "--text", str(text), "--task", "shuffle"]
    assert main(args + ["--set", "eval.max_items=10"]) == 0
    result = json.loads((run.out("pretrain") / "eval.json").read_text())
    assert result["perplexity"]["bytes"] == len(text.read_bytes())
    assert main(args + ["--set", "eval.stride=-1"]) == 2
    assert "eval.stride=-1" in capsys.readouterr().err


def test_builtin_items_on_a_short_text_are_distinct_and_counted_as_they_are(run, tmp_path, capsys):
    """`eval --text` on a few dozen words: as many items as there are different passages
    (not 500 with repeats and falsely tight intervals); too few words: the tasks are skipped
    with the reason, and the perplexity is still reported."""
    run_dir = run.out("pretrain")
    sentence = "The for statement is used to iterate over the elements of a sequence."  # 13 words
    for text, most in (((sentence + " ") * 4, 13), (" ".join(f"w{i}" for i in range(45)), 16)):
        path = tmp_path / "short.txt"
        path.write_text(text)
        assert main(["eval", str(run_dir), "--text", str(path)]) == 0
        result = json.loads((run_dir / "eval.json").read_text())
        for task in ("cloze", "shuffle"):
            t = result["tasks"][task]
            assert 0 < t["items"] <= most and len(set(t["item_ids"])) == t["items"]
    path.write_text("Too short to make a single item of.")
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--text", str(path)]) == 0
    out = capsys.readouterr().out
    assert "bits per byte" in out
    assert "cloze: not scored: built-in tasks need at least 30 words" in out
    assert json.loads((run_dir / "eval.json").read_text())["tasks"] == {}


def test_a_shard_file_scores_like_its_documents_as_text(run):
    from scratchlm.eval.perplexity import heldout_documents

    tok = runs.load_model(run.out("pretrain")).tokenizer
    docs = heldout_documents(run.out("tokenize") / "val_000.bin", tok)
    assert docs == heldout_documents(run.out("tokenize"), tok)
    assert len(docs) >= 1 and tok.eot_id not in docs[0]


def test_the_hook_settings_are_part_of_the_pretrain_stage_key(run):
    from scratchlm.pipeline import stage_key

    def key(**eval_settings) -> str:
        recipe = tiny_recipe(pretrain={"max_steps": 20})
        recipe.eval = EvalSettings(**eval_settings)
        return stage_key("pretrain", recipe, run)

    assert key() == key(max_items=7)  # hook off: evaluation settings do not touch pretraining
    assert key() != key(every_steps=5) != key(every_steps=5, max_items=7)
    assert key(every_steps=5) == key(every_steps=5, batch_size=3)  # speed only


def test_pretraining_hook_logs_task_scores_and_plots_them(run, tmp_path):
    from scratchlm.train.loop import Trainer

    recipe = tiny_recipe(pretrain={"max_steps": 6, "eval_every": 3})
    recipe.eval.every_steps, recipe.eval.max_items, recipe.eval.tasks = 2, 20, ["cloze"]
    out = tmp_path / "run"
    Trainer(recipe, run.out("tokenize"), run.out("tokenizer") / "tokenizer.json", out, progress=False).run()  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r for r in records if "acc/cloze" in r}
    assert sorted(scored) == [0, 2, 4, 6]
    assert "val_loss" in scored[6] and 0 <= scored[6]["acc/cloze"] <= 1  # one record per step
    assert (out / "tasks.png").is_file()


def test_items_a_character_vocabulary_cannot_spell_are_left_out_and_counted(tmp_path):
    tok = CharTokenizer("abcdefg ")
    model = constant_model(torch.full((tok.vocab_size,), -math.log(tok.vocab_size)))
    items = write_lines(tmp_path / "t.jsonl", [{"context": "abc", "choices": ["d", "e"], "answer": 0},
                                               {"context": "xyz", "choices": ["d", "e"], "answer": 0}])  # fmt: skip
    result = evaluate(model, tok, EvalSettings(), tasks=[str(items)])["tasks"][str(items)]
    assert result["items"] == 1 and result["unencodable_items"] == 1


def test_evaluate_is_deterministic_and_leaves_the_model_mode_alone(run):

    loaded = runs.load_model(run.out("pretrain"))

    model, tok = loaded.model, loaded.tokenizer
    model.train()
    docs = [
        tok.encode("The for statement is used to iterate over the elements of a sequence. " * 3)
    ]
    s = EvalSettings(tasks=["shuffle"], max_items=10)
    a, b = evaluate(model, tok, s, docs * 3), evaluate(model, tok, s, docs * 3)
    assert a == b and model.training


# --------------------------------------------------------------------------- lm-eval interop


def lm_eval_items(path: Path) -> Path:
    """Multiple-choice items over the Python docs, with the edge cases of lm-eval's requests:
    a context ending in a space, an empty context, a context longer than the model's window."""
    import re
    from pydoc_data.topics import topics

    words = re.findall(r"\S+", topics["for"] + " " + topics["if"])
    items = []
    for i in range(14):
        context = " ".join(words[i * 6 : i * 6 + 10]) + (" " if i == 3 else "")
        choices = [" ".join(words[j : j + 3]) for j in (i * 6 + 10, i * 6 + 50, i * 6 + 90)]
        items.append({"context": context, "choices": choices, "answer": i % 3})
    items.append({"context": "", "choices": ["The for", "for The"], "answer": 0})
    items.append({"context": " ".join(words[:80]), "choices": ["is", "for the"], "answer": 1})
    return write_lines(path, items)


def test_lm_eval_scores_an_exported_model_the_same_as_scratchlm_eval(run, tmp_path, capsys):
    """`scratchlm export hf`, then EleutherAI's lm_eval on a local YAML task over a local JSONL:
    every choice's log-likelihood and both accuracies agree with `scratchlm eval`."""
    pytest.importorskip("lm_eval")
    import os
    import subprocess
    import sys

    from scratchlm.eval.lmeval import lm_eval_task

    items = lm_eval_items(tmp_path / "items.jsonl")
    lm_eval_task(items, "scratchlm_items", tmp_path / "tasks")
    hf = tmp_path / "hf"
    assert main(["export", "hf", str(run.out("pretrain")), str(hf)]) == 0
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                        "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(tmp_path / "hf_home")}  # fmt: skip
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args", f"pretrained={hf}",
           "--tasks", "scratchlm_items", "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
           "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (samples,) = (tmp_path / "out").rglob("samples_scratchlm_items_*.jsonl")
    theirs = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda r: r["doc_id"])  # fmt: skip
    theirs_ll = [[float(ll) for ll, _ in r["filtered_resps"]] for r in theirs]

    # Ours, on the run folder and on the exported HF folder.
    for folder in (run.out("pretrain"), hf):
        assert main(["eval", str(folder), "--task", f"mc:{items}", "--set", "eval.tasks=[]"]) == 0
        ours = json.loads((folder / "eval.json").read_text())["tasks"][f"mc:{items}"]
        assert ours["correct"] == [int(r["acc"]) for r in theirs]
        assert ours["correct_norm"] == [int(r["acc_norm"]) for r in theirs]
    from scratchlm.eval.choice import load_items

    loaded = runs.load_model(hf)
    model, tok = loaded.model, loaded.tokenizer
    ours_ll = score_items(model, tok, load_items(str(items))[0]).loglik
    worst = max(abs(a - b) for x, y in zip(ours_ll, theirs_ll, strict=True) for a, b in zip(x, y, strict=True))  # fmt: skip
    assert worst < 1e-3, worst
    capsys.readouterr()
