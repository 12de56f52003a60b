"""The GPU check's steps, run by bench/gpu_check.sh (its header says how to call it).

    versions       python, torch, CUDA, the GPU, the packages the other steps import
    tests          pytest -m cuda tests/test_cuda.py (junit XML read back into the report)
    train          bench/train_step.py at GPT-2 124M (context 1024, batch 16), bf16, eager
    train-compile  the same with torch.compile (both sides)
    generate       bench/generate.py at 124M: greedy decode against HF generate, bf16 and fp32
    run            `scratchlm run bench/gpu_check.yaml` on CUDA: every stage of the chain

Each step runs as a subprocess under a time limit taken from one budget (GPU_CHECK_BUDGET
seconds, default 470: the whole check stays under 8 minutes); a step the budget cannot fit is
skipped and says so. After every step the report is rewritten to $OUT/gpu_check.json (else
bench/out/gpu/), so a run cut short still returns what it measured; the full output goes to
gpu_check.log beside it. The last lines printed are the targets, each PASS / MISS / n/a.

GPU_CHECK_DRY_RUN=1 (or --cpu) runs the same steps on the CPU at tiny sizes, to debug the
check without a GPU. GPU_CHECK_STEPS=tests,train picks steps. Without a GPU and without the
dry run it prints why and exits 0 (so `make bench` passes over it).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("versions", "tests", "train", "train-compile", "generate", "run")
PACKAGES = (
    "torch", "transformers", "tokenizers", "numpy", "tiktoken", "safetensors", "fastapi",
    "uvicorn", "pydantic", "httpx", "ftfy", "zstandard", "pytest",
)  # fmt: skip
# The targets on the device.
TARGET_MFU, TARGET_STEP_RATIO, TARGET_DECODE_RATIO = 0.45, 1.0, 1.0


class Check:
    def __init__(self, dry: bool, out_dir: Path, budget: float):
        self.dry, self.out_dir, self.budget = dry, out_dir, budget
        self.device = "cpu" if dry else "cuda"
        self.start = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log = (out_dir / "gpu_check.log").open("w", encoding="utf-8")
        self.report: dict = {"dry_run": dry, "device": self.device, "steps": {}}

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def save(self) -> None:
        self.report["seconds"] = round(time.monotonic() - self.start, 1)
        path = self.out_dir / "gpu_check.json"
        path.write_text(json.dumps(self.report, indent=2) + "\n")

    def command(self, args: list[str], cap: float) -> dict:
        """Run one command with its output streamed to the console and the log; killed (its
        whole process group) when it outlives min(cap, the budget left)."""
        limit = max(1.0, min(cap, self.left()))
        self.say(f"$ {' '.join(args)}   (limit {limit:.0f} s)")
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", start_new_session=True,
        )  # fmt: skip
        reader = threading.Thread(target=lambda: [self.say(line.rstrip()) for line in proc.stdout])
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # this child's own session only
            proc.wait()
        reader.join(timeout=10)
        seconds = round(time.monotonic() - started, 1)
        self.say(f"# exit {proc.returncode}{' (out of time)' if timed_out else ''}, {seconds} s")
        return {"returncode": proc.returncode, "timed_out": timed_out, "seconds": seconds}

    def step(self, name: str, fn) -> None:
        self.say(f"\n===== {name} ({self.left():.0f} s of the budget left)")
        if self.left() < 20:
            self.report["steps"][name] = {"skipped": "out of time: the budget is spent"}
        else:
            try:
                self.report["steps"][name] = fn()
            except Exception as e:  # a bug of the check itself: report it, go on
                self.report["steps"][name] = {"error": f"{type(e).__name__}: {e}"}
                self.say(f"# {name}: {type(e).__name__}: {e}")
        self.save()

    # ------------------------------------------------------------------ the steps

    def versions(self) -> dict:
        import torch

        info = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "cpu_count": os.cpu_count(),
        }
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info |= {
                "gpu": props.name,
                "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "bf16": torch.cuda.is_bf16_supported(),
            }
        if shutil.which("nvidia-smi"):
            q = "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm"
            smi = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True)  # fmt: skip
            info["nvidia_smi"] = smi.stdout.strip()
        packages = {}
        for name in PACKAGES:
            try:
                packages[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                packages[name] = None
        info["packages"] = packages
        for key, value in info.items():
            self.say(f"{key}: {value}")
        missing = [n for n, v in packages.items() if v is None]
        if missing:
            self.say(f"# missing: {missing} (carry wheels: bench/gpu_wheels.sh)")
        return info

    def tests(self) -> dict:
        junit = self.work / "junit.xml"
        args = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
        args += [f"--junitxml={junit}"]
        # Only the cuda file: other test modules import packages a GPU image may lack.
        args += ["tests/test_cuda.py", "tests/test_device.py"] if self.dry else ["-m", "cuda", "tests/test_cuda.py"]  # fmt: skip
        result = self.command(args, cap=300)
        result["tests"] = read_junit(junit) if junit.exists() else None
        return result

    def train(self, compile_: bool) -> dict:
        out = self.work / f"train_{'compile' if compile_ else 'eager'}.json"
        args = [sys.executable, "bench/train_step.py", "--device", self.device, "--out", str(out)]
        if self.dry:
            args += ["--shapes", "shakespeare-char", "--steps", "3", "--rounds", "1"]
            args += ["--dtype", "bfloat16", "--peak-size", "256"]
        else:
            args += ["--shapes", "124m", "--block-size", "1024", "--batch", "16"]
            args += ["--steps", "10", "--rounds", "3", "--dtype", "bfloat16"]
        if compile_:
            args.append("--compile")
        result = self.command(args, cap=240 if compile_ else 90)
        result["bench"] = json.loads(out.read_text()) if out.exists() else None
        return result

    def generate(self) -> dict:
        result = {}
        for dtype in ("bfloat16", "float32"):
            out = self.work / f"generate_{dtype}.json"
            args = [sys.executable, "bench/generate.py", "--device", self.device, "--dtype", dtype]
            args += ["--out", str(out)]
            if self.dry:
                args += ["--shapes", "10m", "--new-tokens", "16", "--rounds", "1", "--threads", "2"]
            else:
                args += ["--shapes", "124m", "--new-tokens", "128", "--rounds", "3"]
            result[dtype] = self.command(args, cap=90)
            result[dtype]["bench"] = json.loads(out.read_text()) if out.exists() else None
        return result

    def run(self) -> dict:
        work = self.work / "run"
        args = [sys.executable, "-m", "scratchlm", "run", "bench/gpu_check.yaml", "--work", str(work), "-q"]  # fmt: skip
        if self.dry:
            for s in ("pretrain.device=cpu", "finetune.device=cpu", "pretrain.max_steps=20",
                      "pretrain.eval_every=10", "pretrain.batch_size=8", "finetune.max_steps=3",
                      "model.n_layer=2", "model.n_embd=64", "eval.max_items=50"):  # fmt: skip
                args += ["--set", s]
        result = self.command(args, cap=180)
        metrics = work / "runs" / "gpu-check" / "metrics.jsonl"
        if metrics.exists():
            records = [json.loads(x) for x in metrics.read_text().splitlines()]
            steps = [r for r in records if "tokens_per_second" in r]
            late = steps[len(steps) // 2 :] or steps
            vals = [r["val_loss"] for r in records if "val_loss" in r]
            result["pretrain"] = {
                "steps": len(steps),
                "tokens_per_second_median": round(
                    statistics.median(r["tokens_per_second"] for r in late)
                ),  # fmt: skip
                "mfu_median": round(statistics.median(r["mfu"] for r in late), 4),
                "val_loss_first_last": [round(vals[0], 3), round(vals[-1], 3)] if vals else None,
            }
        return result

    # ------------------------------------------------------------------ the verdict

    def targets(self) -> list[tuple[str, str, str]]:
        steps = self.report["steps"]
        rows = []

        def row(name: str, value, ok: bool | None, step: str = "") -> None:
            if step and step not in steps:
                value, ok = "not selected (GPU_CHECK_STEPS)", None
            verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
            rows.append((name, str(value), verdict))

        t = (steps.get("tests") or {}).get("tests")
        if t:
            value = f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped"
            row("cuda tests all pass", value, t["failed"] == 0 and t["passed"] > 0 if not self.dry else None)  # fmt: skip
        else:
            row("cuda tests all pass", "did not run", False, "tests")
        for key, label in (("train", "eager"), ("train-compile", "compile")):
            bench = (steps.get(key) or {}).get("bench") or {}
            name, shape = next(((k, v) for k, v in bench.items() if isinstance(v, dict) and "mfu" in v), (None, None))  # fmt: skip
            if not shape:
                row(f"train bf16 {label}", "did not run", None if key == "train" else False, key)
                continue
            mfu, ratio = shape["mfu"]["scratchlm"], shape["ratio_scratchlm_over_nanogpt_way"]
            tok = shape["tokens_per_second"]["scratchlm"]
            gate = key == "train-compile" and not self.dry
            what = f"train {name} bf16 {label}"
            row(f"{what}: MFU of measured peak >= {TARGET_MFU}", f"{mfu} ({tok:,} tok/s)", mfu >= TARGET_MFU if gate else None)  # fmt: skip
            row(f"{what}: ours / nanoGPT way >= {TARGET_STEP_RATIO}", ratio, ratio >= TARGET_STEP_RATIO if gate else None)  # fmt: skip
        for dtype in ("bfloat16", "float32"):
            bench = ((steps.get("generate") or {}).get(dtype) or {}).get("bench") or {}
            name, shape = next(((k, v) for k, v in bench.items() if isinstance(v, dict) and "decode_ratio_vs_hf" in v), (None, None))  # fmt: skip
            if not shape:
                row(f"decode {dtype} vs HF generate", "did not run", None if dtype == "float32" else False, "generate")  # fmt: skip
                continue
            ratio = shape["decode_ratio_vs_hf"]
            value = f"{ratio} ({shape['decode_tokens_per_second']['scratchlm']} tok/s, greedy identical: {shape['greedy_identical']})"  # fmt: skip
            row(f"decode {name} {dtype}: ours / HF generate >= {TARGET_DECODE_RATIO}", value, ratio >= TARGET_DECODE_RATIO if not self.dry else None)  # fmt: skip
        run = steps.get("run") or {}
        pre = run.get("pretrain")
        ok = run.get("returncode") == 0 and pre is not None
        row("scratchlm run end to end", pre or run.get("skipped") or "failed", ok, "run")
        return rows


def read_junit(path: Path) -> dict:
    root = ET.parse(path).getroot()
    cases, counts = [], {"passed": 0, "failed": 0, "skipped": 0}
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:500]
            elif child.tag == "skipped":
                outcome, message = "skipped", (child.get("message") or "")[:200]
        counts[outcome] += 1
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message})  # fmt: skip
    return counts | {"cases": cases}


def main() -> int:
    dry = os.environ.get("GPU_CHECK_DRY_RUN", "0") == "1" or "--cpu" in sys.argv[1:]
    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "out" / "gpu")
    budget = float(os.environ.get("GPU_CHECK_BUDGET", "470"))
    wanted = os.environ.get("GPU_CHECK_STEPS", ",".join(STEPS)).split(",")
    unknown = set(wanted) - set(STEPS)
    if unknown:
        print(f"GPU_CHECK_STEPS: unknown {sorted(unknown)}; the steps are {','.join(STEPS)}")
        return 2
    import torch

    if not dry and not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu_check", "skipped": "torch sees no CUDA device; GPU_CHECK_DRY_RUN=1 runs the steps on the CPU"}))  # fmt: skip
        return 0
    check = Check(dry, out_dir, budget)
    check.say(f"gpu_check: {'DRY RUN on the CPU' if dry else 'CUDA'}, budget {budget:.0f} s, steps {','.join(wanted)}, results in {out_dir}")  # fmt: skip
    plan = {
        "versions": check.versions,
        "tests": check.tests,
        "train": lambda: check.train(compile_=False),
        "train-compile": lambda: check.train(compile_=True),
        "generate": check.generate,
        "run": check.run,
    }
    for name in STEPS:
        if name in wanted:
            check.step(name, plan[name])
    rows = check.targets()
    check.report["targets"] = [{"target": n, "value": v, "verdict": r} for n, v, r in rows]
    check.save()
    check.say("\n===== targets" + (" (dry run: sizes too small to judge)" if dry else ""))
    width = max(len(n) for n, _, _ in rows)
    for name, value, verdict in rows:
        check.say(f"{verdict:4}  {name:{width}}  {value}")
    check.say(f"report: {out_dir / 'gpu_check.json'}  log: {out_dir / 'gpu_check.log'}")
    shutil.rmtree(check.work, ignore_errors=True)
    failed = [n for n, s in check.report["steps"].items() if not succeeded(s)]
    return 1 if failed else 0


def succeeded(result: dict) -> bool:
    """No command of the step failed (a step's result may hold several commands' results)."""
    if "error" in result or result.get("returncode") not in (None, 0):
        return False
    return all(succeeded(v) for v in result.values() if isinstance(v, dict) and "returncode" in v)


if __name__ == "__main__":
    sys.exit(main())
