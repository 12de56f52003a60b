"""Every command the README and the guide show runs, as written, in order, so that the front
door cannot rot: each ```bash line (and the README's Python snippet) is one test.

They run in a checkout of their own (README, docs, examples and src linked into a temporary
folder, ../shared beside it when the team's data is there), so `work/` is the test's. What
makes them cheap is added, never changed: every command that reads the recipe gets TINY (the
demo recipe in miniature) before its own --set lines, the step counts it names are divided
(pretrain.max_steps by 100, finetune.max_steps by 50), generate and eval get short limits, a
server gets a free port. `scratchlm ...` runs in this process (no interpreter start-up each
time); torchrun, `python -m`, servers and other programs run as processes.

A command found in the docs that this file does not know how to run fails the test: add it to
EXCLUDED with the reason, or make it run.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serving import running_server

import scratchlm
from scratchlm.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("[0-9][0-9]-*.md"))]
SHARED = ROOT.parent / "shared"

TINY = {  # the demo recipe in miniature: each stage takes a second or so
    "curate.max_docs": 6,
    "curate.workers": 1,
    "tokenizer.vocab_size": 300,
    "tokenizer.workers": 1,
    "tokenize.threads": 1,
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.n_embd": 32,
    "pretrain.max_steps": 6,
    "pretrain.batch_size": 4,
    "pretrain.warmup_steps": 1,
    "pretrain.eval_every": 3,
    "pretrain.eval_batches": 1,
    "pretrain.threads": 1,
    "finetune.max_steps": 2,
    "finetune.batch_size": 4,
    "finetune.eval_every": 2,
    "finetune.max_new_tokens": 8,
    "finetune.threads": 1,
    "rl.max_steps": 2,
    "rl.batch_size": 2,
    "rl.group_size": 2,
    "rl.eval_prompts": 10,
    "rl.threads": 1,
    "generate.max_new_tokens": 8,
    "eval.max_items": 20,
    "eval.max_tokens": 2000,
}
RECIPE_COMMANDS = ("run", "curate", "tokenize", "pretrain", "tokenizer train")
SCALE = {"pretrain.max_steps": 100, "finetune.max_steps": 50, "eval.every_steps": 100}
SMALL_DATA = "examples/"  # fine-tuning files small enough to run their epochs as written

EXCLUDED = {
    "make demo": "installs the package into .venv first; what it runs is `scratchlm run`, "
    "tested below",
    "make test": "this test suite",
    "make lint": "installs the package into .venv first; ruff is run by the CI on the sources",
    "make bench": "installs the package first, and benchmarks never run as tests "
    "(tests/test_bench.py checks that one without its data is skipped)",
    "python -m scratchlm --help": "tests/test_cli_help.py runs it, and every command's --help",
    "scratchlm pretrain --nproc-per-node 2 --set parallel.strategy=ddp": "the same launcher "
    "as the tp line, which runs here; tests/test_distributed.py runs ddp through it",
    "scratchlm pretrain --nproc-per-node 2 --set parallel.strategy=fsdp": "the same launcher "
    "as the tp line, and the same training as the torchrun fsdp line, which both run here",
    "scratchlm pretrain --nproc-per-node 4 --set parallel.strategy=fsdp+tp --set "
    "parallel.tp_size=2": "4 processes; tests/test_distributed.py runs fsdp+tp on 4 "
    "processes with the demo's Muon and SwiGLU against one process",
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint "
    "10.0.0.1:29500 --rdzv-id my-run --max-restarts 3 -m scratchlm pretrain --work "
    "/shared/work --set parallel.strategy=fsdp": "two machines at 10.0.0.1 with 8 GPUs each",
    ".venv/bin/python -m pytest -m cuda": "the cuda tests are part of this suite "
    "(tests/test_cuda.py), skipped with the reason on a machine without a GPU",
    "bash bench/gpu_check.sh": "needs a CUDA GPU (bench/gpu_check.sh checks; the device run is "
    "in docs/LOG.md)",
    "GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh": "about 5 minutes of the GPU check's steps "
    "on the CPU at tiny sizes; its parts (the cuda tests, bench/train_step.py, "
    "bench/generate.py, scratchlm run) are each tested or run elsewhere",
    "lm_eval --model local-completions --tasks TASK --batch_size 8 --model_args model=demo,"
    "base_url=http://127.0.0.1:8000/v1/completions,tokenizer_backend=remote,max_length=128": "TASK "
    "stands for a task of yours; tests/test_lmeval_serve.py runs lm-eval's local-completions "
    "against the server and compares every log-likelihood with scratchlm eval's",
    "lm_eval --model hf --model_args pretrained=work/demo/hf --include_path work/tasks "
    "--tasks my_task": "lm-eval takes a minute to start; tests/test_eval.py runs this very "
    "command on an exported model and compares every log-likelihood",
}


# --------------------------------------------------------------------------- reading the docs


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # outside quotes, after a space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == "\\" and quote != "'":
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(text: str) -> list[str]:
    """The commands of every ```bash block, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        joined = re.sub(r"[ \t]*\\\n\s*", " ", block)
        commands += [c for line in joined.splitlines() if (c := _strip_comment(line.strip()))]
    return commands


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def split(command: str) -> list[str]:
    """Words as bash reads them, $'...' (ANSI-C quoting: $'Romeo.\\n') included."""

    def ansi_c(m: re.Match) -> str:
        return shlex.quote(codecs.decode(m.group(1), "unicode_escape"))

    return shlex.split(re.sub(r"\$'((?:[^'\\]|\\.)*)'", ansi_c, command))


SHOWN = [(doc, cmd) for doc in DOCS for cmd in shell_commands(doc.read_text())]
COMMANDS = [
    (doc, cmd) for i, (doc, cmd) in enumerate(SHOWN) if cmd not in {c for _, c in SHOWN[:i]}
]


# --------------------------------------------------------------------------- running them


def reduce(argv: list[str]) -> list[str]:
    """A `scratchlm` command with what makes it cheap added (see the module's docstring)."""
    if argv[:1] == ["scratchlm"]:
        return ["scratchlm", *reduce(argv[1:])]
    words = [w for w in argv if not w.startswith("-")]
    command = " ".join(words[:2]) if words[:1] == ["tokenizer"] else words[0]
    own, out, it = [], [], iter(argv)
    for word in it:
        if word == "--set":
            key, _, value = next(it).partition("=")
            if key in SCALE:
                value = str(max(1, int(value) // SCALE[key]))
            own.append(f"{key}={value}")
        else:
            out.append(word)
    tiny: dict[str, object] = {}
    if command in RECIPE_COMMANDS and "--input" not in argv:
        tiny = dict(TINY)
    elif command == "finetune":
        tiny = {k: v for k, v in TINY.items() if k.startswith("finetune.")}
        data = argv[argv.index("--data") + 1] if "--data" in argv else ""
        if any(o.startswith("finetune.epochs=") for o in own) and data.startswith(SMALL_DATA):
            tiny.pop("finetune.max_steps")  # a few examples: its epochs, as written
    elif command in ("generate", "chat"):
        tiny = {"generate.max_new_tokens": 8}
    elif command == "eval":
        tiny = {k: v for k, v in TINY.items() if k.startswith("eval.")}
    elif command == "tokenizer train":  # --input: a tokenizer of files, no recipe stages
        tiny = {"tokenizer.workers": 1}
    sets = [f"{k}={v}" for k, v in tiny.items()] + own
    return out + [arg for s in sets for arg in ("--set", s)]


class Checkout:
    """The folder the commands run in, and the server the last `scratchlm serve` started."""

    def __init__(self, root: Path):
        self.root = root
        self.server: contextlib.ExitStack | None = None
        self.url = ""

    def env(self, **extra: str) -> dict[str, str]:
        path = str(Path(scratchlm.__file__).resolve().parents[1])  # the code under test
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}
        env.pop("SCRATCHLM_API_KEY", None)
        return env

    def serve(self, run: str, *args: str) -> str:
        if self.server:
            self.server.close()
        self.server = contextlib.ExitStack()
        self.url = self.server.enter_context(running_server(Path(run), *args))
        return self.url


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Checkout:
    root = tmp_path_factory.mktemp("readme")
    (root / "checkout").mkdir()
    for name in ("README.md", "docs", "examples", "src"):
        (root / "checkout" / name).symlink_to(ROOT / name)
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED)
    c = Checkout(root / "checkout")
    yield c
    if c.server:
        c.server.close()


def run_scratchlm(argv: list[str], capsys) -> str:
    code = main(reduce(argv))
    out, err = capsys.readouterr()
    assert code == 0, f"exit {code}\n{out[-2000:]}\n{err[-2000:]}"
    return out


def run_process(c: Checkout, argv: list[str], stdin: str = "") -> str:
    # The timeout turns a hang into a failure; it is not a speed requirement.
    proc = subprocess.run(
        argv, cwd=c.root, env=c.env(), input=stdin, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def launcher_args(argv: list[str]) -> list[str]:
    """torchrun's own options as written, then our command reduced."""
    at = argv.index("scratchlm")
    return argv[: at + 1] + reduce(argv[at + 1 :])


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d.name}: {c[:70]}" for d, c in COMMANDS])
def test_command(doc, command, checkout, capsys, monkeypatch):
    if command in EXCLUDED:
        pytest.skip(EXCLUDED[command])
    monkeypatch.chdir(checkout.root)
    argv = split(command)
    env = {}
    while "=" in argv[0] and not argv[0].startswith("-"):  # VAR=value command
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    if "shakespeare-char" in argv and not SHARED.is_dir():
        pytest.skip(f"needs {SHARED}/data (the team's shared data), as the README says")

    if argv[:2] == ["scratchlm", "serve"]:
        serve(checkout, argv, env)
    elif argv[0] == "scratchlm" and "--nproc-per-node" in argv:
        run_process(checkout, [sys.executable, "-m", *launcher_args(argv)])
    elif argv[:2] == ["scratchlm", "chat"]:  # a terminal: its own process, reading stdin
        talk = "Who is Romeo?\n/exit\n"
        out = run_process(checkout, [sys.executable, "-m", *reduce(argv)], stdin=talk)
        assert out.count("assistant> ") == 1
    elif argv[0] == "scratchlm":
        check_output(argv, run_scratchlm(argv[1:], capsys))
    elif argv[0] == "torchrun":
        run_process(checkout, [sys.executable, "-m", "torch.distributed.run", "--standalone", *launcher_args(argv)[1:]])  # fmt: skip
    elif argv[:3] == ["python", "-m", "scratchlm"]:
        assert "pretrain" in run_process(checkout, [sys.executable, *argv[1:]])
    elif argv[0] == "python":
        run_process(checkout, [sys.executable, *argv[1:]])
    elif argv[0] == "curl":
        assert checkout.url, "curl needs the server a `scratchlm serve` line above started"
        url = checkout.url.replace("http://127.0.0.1", "localhost")
        line = command.replace("localhost:8000", url.removeprefix("http://"))
        reply = json.loads(run_process(checkout, ["bash", "-c", line]))
        assert reply["choices"][0]["text"] is not None
    elif argv[0] in ("cp",):
        run_process(checkout, argv)
    else:
        pytest.fail(
            f"{doc.name}: no way to run {command!r}: make it run here or add it to EXCLUDED"
        )


def serve(c: Checkout, argv: list[str], env: dict[str, str]) -> None:
    """A real server on a free port (the README's port is replaced): it answers /v1/models
    under the folder's name; with an API key, only with the key."""
    args = argv[3:]
    if "--port" in args:
        at = args.index("--port")
        del args[at : at + 2]
    if env.get("SCRATCHLM_API_KEY"):  # its own server, stopped again
        key = env["SCRATCHLM_API_KEY"]
        with running_server(Path(argv[2]), "--api-key", key, *args) as url:
            assert httpx.get(f"{url}/v1/models").status_code == 401
            auth = {"Authorization": f"Bearer {key}"}
            assert httpx.get(f"{url}/v1/models", headers=auth).status_code == 200
        return
    url = c.serve(argv[2], *args)
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [Path(argv[2]).name]


def check_output(argv: list[str], out: str) -> None:
    """What a few commands must say, beyond exiting 0."""
    if argv[1:3] == ["run", "--set"] and "pretrain.max_steps=2000" in argv:
        assert "is kept as work/demo/runs/demo." in out  # the 600-step run is kept
    if argv[1:3] == ["run", "--force"]:
        assert "put back the run kept as" in out
    if "--lora" in argv and "alpaca.json" in " ".join(argv):  # it learns (by how much on the
        before, after = map(float, re.search(r"val loss (\S+) -> (\S+)", out).groups())
        assert after < before, out  # demo model: docs/LOG.md; this one is 1 layer of 32)


READMES_PYTHON = python_blocks((ROOT / "README.md").read_text())


def readme_snippet(marker: str) -> str:
    (code,) = [block for block in READMES_PYTHON if marker in block]
    return code


def test_the_readme_snippets_are_the_ones_run_here():
    markers = ("from openai import OpenAI", "from llama_cpp import Llama", "load_dataset")
    assert len(READMES_PYTHON) == len(markers)
    assert all(readme_snippet(m) for m in markers)


def test_the_llama_cpp_snippet_chats_with_the_exported_file(checkout):
    """The README's llama-cpp-python lines, as written, on the file its export line made, in
    the Python that has llama-cpp-python (its own venv: bench/llama_cpp_worker.py)."""
    worker = ROOT / "bench" / "llama_cpp_worker.py"
    spec = importlib.util.spec_from_file_location("llama_cpp_worker", worker)
    llama_cpp_worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(llama_cpp_worker)
    python = llama_cpp_worker.llama_cpp_python()
    if python is None:
        pytest.skip(f"llama-cpp-python is not installed: {llama_cpp_worker.INSTALL}")
    if not (checkout.root / "work" / "demo" / "demo-sft.gguf").is_file():
        pytest.skip("runs after the README's commands (run the whole file)")
    code = readme_snippet("from llama_cpp import Llama")
    r = subprocess.run(
        [python, "-c", code], cwd=checkout.root, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]


def test_the_datasets_snippet_reads_the_curated_shards(checkout, monkeypatch):
    """The README's `load_dataset` lines, as written, on the folder its curate line made."""
    if not (checkout.root / "work" / "pydoc" / "curated").is_dir():
        pytest.skip("runs after the README's commands (run the whole file)")
    monkeypatch.chdir(checkout.root)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(readme_snippet("load_dataset"), "README.md[datasets]", "exec"), namespace)
    assert len(namespace["ds"]) > 0 and set(namespace["ds"].column_names) >= {"id", "text"}


def test_the_openai_snippet_talks_to_the_served_chat_run(checkout, capsys, monkeypatch):
    """The README's snippet, as written, against `scratchlm serve work/demo/runs/demo-sft`
    (started by its line above; the port is the test's)."""
    if not (checkout.root / "work" / "demo" / "runs" / "demo-sft").is_dir():
        pytest.skip("runs after the README's commands (run the whole file)")
    monkeypatch.chdir(checkout.root)
    url = checkout.serve("work/demo/runs/demo-sft")
    code = readme_snippet("from openai import OpenAI").replace("http://127.0.0.1:8000", url)
    exec(compile(code, "README.md[python]", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()  # a streamed answer


def test_every_excluded_command_is_still_in_the_docs():
    shown = {cmd for _, cmd in COMMANDS}
    assert set(EXCLUDED) <= shown, set(EXCLUDED) - shown
