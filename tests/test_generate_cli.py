"""`scratchlm generate` (--prompt, --input JSONL, HF folders) and `scratchlm chat`, run as a user
runs them, plus the chat's history window."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from scratchlm import runs
from scratchlm.config import GenerateSettings
from scratchlm.infer.chat import Chat, run_chat


def scratchlm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def test_generate_from_a_file_writes_jsonl_in_order(tiny_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('The \n\n{"prompt": "def f(x):\\n    return"}\nclass {x}\n')
    out = tmp_path / "out.jsonl"
    r = scratchlm("generate", str(tiny_run), "--input", str(prompts), "--output", str(out), "--batch-size", "2", "--set", "generate.max_new_tokens=6")  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["prompt"] for x in lines] == ["The ", "def f(x):\n    return", "class {x}"]
    for x in lines:
        assert x["finish_reason"] in ("stop", "length") and x["completion_tokens"] <= 6
        assert isinstance(x["completion"], str) and x["prompt_tokens"] > 0


def test_generate_reads_an_hf_folder_like_our_run(tiny_run, tmp_path):
    hf = tmp_path / "hf"
    assert scratchlm("export", "hf", str(tiny_run), str(hf)).returncode == 0
    greedy = ("--prompt", "The ", "--set", "generate.temperature=0", "--set", "generate.max_new_tokens=16")  # fmt: skip
    ours, theirs = scratchlm("generate", str(tiny_run), *greedy), scratchlm("generate", str(hf), *greedy)  # fmt: skip
    assert ours.returncode == 0 and theirs.returncode == 0, theirs.stderr
    assert ours.stdout.startswith("The ") and theirs.stdout == ours.stdout


def test_chat_and_serve_on_a_folder_without_a_model(tmp_path):
    for command in ("chat", "serve"):  # (generate: tests/test_chain.py)
        r = scratchlm(command, str(tmp_path))
        assert r.returncode == 2 and "not a run folder" in r.stderr and "Traceback" not in r.stderr


def test_the_terminal_chat_streams_and_obeys_its_commands(tiny_run):
    script = (
        "Hello\n/system You are terse.\nHow are you?\n/reset\n/nonsense\nBye\n/exit\nnever read\n"
    )
    r = scratchlm("chat", str(tiny_run), "--set", "generate.max_new_tokens=8", stdin=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("assistant> ") == 3  # three messages answered, none after /exit
    assert "(system message set; conversation cleared)" in out
    assert "(conversation cleared)" in out and "(unknown command" in out


def chat(tiny_run: Path, **settings) -> Chat:
    loaded = runs.load_model(tiny_run)
    model, tok = loaded.model, loaded.tokenizer
    return Chat(model, tok, runs.chat_template(tiny_run, tok), GenerateSettings(**settings))


def test_the_chat_drops_the_oldest_turns_to_fit_the_context(tiny_run):
    c = chat(tiny_run, max_new_tokens=8, seed=1)
    c.reset("Be kind.")
    long = "word "
    while len(c.tokenizer.encode(long)) < 170:  # three such messages outgrow 512 - 8 tokens
        long += "word "
    dropped = [c.reply(f"{i} {long}", lambda _: None)[1] for i in range(4)]
    assert dropped[:2] == [0, 0] and dropped[2] > 0
    ids, _ = c.template.render(c.tokenizer, c.system + c.turns, add_generation_prompt=False)
    assert len(ids) <= c.model.cfg.block_size
    assert c.system == [{"role": "system", "content": "Be kind."}]  # the system message stays
    assert c.turns[-2]["content"].startswith("3 ")  # the newest message stays


def test_the_chat_refuses_a_message_longer_than_the_context(tiny_run):
    c = chat(tiny_run, max_new_tokens=8)
    out = io.StringIO()
    run_chat(c, io.StringIO("word " * 700 + "\nhi\n"), out)
    assert "say it in fewer words" in out.getvalue()
    assert out.getvalue().count("assistant> ") == 2 and len(c.turns) == 2  # it goes on after


def test_streamed_pieces_make_the_reply(tiny_run):
    c = chat(tiny_run, max_new_tokens=20, temperature=0)  # greedy: a long reply
    seen: list[str] = []
    answer, _ = c.reply("Hi", seen.append)
    assert "".join(seen) == answer and len(seen) >= 2


def test_every_turn_samples_with_a_seed_of_its_own(tiny_run):
    """The same seed on two questions draws the same noise: a weak model then answers both
    alike. Each turn gets its own, different for different questions after /reset too, and
    the same again when a session is replayed with the same seed and messages."""

    def seeds_of(messages: list[str]) -> list[int]:
        c, seeds = chat(tiny_run, max_new_tokens=2, seed=5), []
        real = c.turn_seed
        c.turn_seed = lambda ids: seeds.append(real(ids)) or seeds[-1]  # a spy
        for m in messages:
            if m == "/reset":
                c.reset()
            else:
                c.reply(m, lambda _: None)
        return seeds

    seeds = seeds_of(["Who is Romeo?", "/reset", "Who is Juliet?", "And Tybalt?"])
    assert len(set(seeds)) == 3
    assert seeds_of(["Who is Romeo?", "/reset", "Who is Juliet?", "And Tybalt?"]) == seeds


def test_extreme_or_invalid_sampling_settings_never_show_a_traceback(tiny_run):
    base = ("generate", str(tiny_run), "--prompt", "The ", "--set", "generate.max_new_tokens=5")
    tiny = scratchlm(*base, "--set", "generate.temperature=1e-300")  # greedy, not a NaN
    greedy = scratchlm(*base, "--set", "generate.temperature=0")
    assert tiny.returncode == 0 and "Traceback" not in tiny.stderr, tiny.stderr
    assert tiny.stdout == greedy.stdout
    for bad in ("temperature=nan", "temperature=inf", "repetition_penalty=inf", "top_p=nan"):
        r = scratchlm(*base, "--set", f"generate.{bad}")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"generate.{bad.split('=')[0]}" in r.stderr and "finite" in r.stderr
