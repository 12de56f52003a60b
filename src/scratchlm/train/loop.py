"""The pretraining loop: next-token prediction on token shards, exactly resumable.

Run folder:
    config.yaml        the exact effective recipe (vocab size filled in): reproduce from it
    tokenizer.json     a copy, so the run folder alone can generate text
    metrics.jsonl      one JSON object per step, evaluation and sample
    loss.png           train and validation loss, redrawn at every evaluation
    checkpoints/       step_NNNNNN/ folders (see checkpoint.py); the last K and the best kept

A checkpoint holds everything the next step depends on: weights, optimizer state, the data
order's position, every RNG state and the step. On CPU, a run killed at any moment and
resumed with `resume: auto` ends with exactly the same weights as one never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from scratchlm.config import PretrainSettings, Recipe
from scratchlm.errors import StageError
from scratchlm.io import atomic_write_json, atomic_write_text
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.shards import load_meta
from scratchlm.tokenizer.tokenizer import load_tokenizer
from scratchlm.train import distributed
from scratchlm.train.checkpoint import latest_checkpoint, load_weights, save_checkpoint
from scratchlm.train.data import TokenData
from scratchlm.train.mfu import peak_flops
from scratchlm.train.optim import lr_scale, make_optimizer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("pretrain.device=cuda but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise StageError("pretrain.device=mps but MPS is not available")
    return torch.device(name)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 on CUDA (no loss scaling needed); float32 on CPU, where bf16 matmuls are slow.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def apply_activation_checkpointing(model: GPT) -> None:
    """Recompute each block's activations during backward instead of storing them."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        block.forward = partial(checkpoint, type(block).forward, block, use_reentrant=False)


def prepare_run(
    recipe: Recipe, tokens_dir: Path, tokenizer_path: Path, run_dir: Path, write: bool = True
) -> Recipe:
    """Fill in the vocab size from the tokens; check that a run being resumed has the same
    model; then write config.yaml and the tokenizer copy (nothing is written if a check fails)."""
    meta = load_meta(tokens_dir)
    cfg = recipe.model
    if cfg.vocab_size == 0:
        cfg = dataclasses.replace(cfg, vocab_size=meta["vocab_size"])
    elif cfg.vocab_size < meta["vocab_size"]:
        raise StageError(
            f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {meta['vocab_size']}"
        )
    recipe = dataclasses.replace(recipe, model=cfg)
    if meta.get("tokenizer") != load_tokenizer(tokenizer_path).fingerprint():
        raise StageError(
            f"{tokens_dir} was made with another tokenizer than {tokenizer_path}: run `scratchlm tokenize` again"
        )
    if recipe.pretrain.resume == "auto" and list((run_dir / "checkpoints").glob("step_*[0-9]")):
        ckpt = latest_checkpoint(run_dir)
        if json.loads((ckpt / "meta.json").read_text()).get("model") != dataclasses.asdict(cfg):
            raise StageError(
                f"{ckpt} was trained with other model settings; resume needs the same model.*"
            )
        if not (ckpt / "state.pt").is_file():
            raise StageError(
                f"{ckpt} holds weights only (an imported model?), no training state to resume"
            )
    if write:  # on several processes, rank 0 alone writes
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", recipe.to_yaml())
        shutil.copyfile(tokenizer_path, run_dir / "tokenizer.json")
    return recipe


def grad_accum_steps(s: PretrainSettings, block_size: int, world: int = 1) -> int:
    if not s.tokens_per_step:
        return s.grad_accum
    per_micro = s.batch_size * block_size * world
    if s.tokens_per_step % per_micro:
        raise StageError(
            f"pretrain.tokens_per_step={s.tokens_per_step} is not a multiple of batch_size x block_size x "
            f"processes = {per_micro}"
        )
    return s.tokens_per_step // per_micro


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM arrived: a checkpoint was saved, and the run can resume."""


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        tokens_dir: Path,
        tokenizer_path: Path,
        run_dir: Path,
        progress: bool = True,
    ):
        self.s = s = recipe.pretrain
        main = distributed.is_main_process()
        world = int(os.environ.get("WORLD_SIZE", "1")) if distributed.launched() else 1
        device = resolve_device(s.device)  # parallel settings are checked before any write
        distributed.check_settings(recipe.parallel, recipe.model, s, world, device.type)
        self.run_dir, self.progress = run_dir, progress and main
        self.recipe = recipe = prepare_run(recipe, tokens_dir, tokenizer_path, run_dir, main)
        self.cfg = cfg = recipe.model
        self.dist, self.device = distributed.setup(recipe.parallel, device)
        set_threads(s.threads)
        self._check_loggers()
        meta = load_meta(tokens_dir)
        self.train_data = TokenData(
            tokens_dir,
            "train",
            meta["files"]["train"],
            meta["dtype"],
            cfg.block_size,
            s.seed,
            self.dist.dp_rank,
            self.dist.dp_world,
        )
        self.val_split = "val" if meta["files"]["val"] else "train"
        val = TokenData(
            tokens_dir,
            self.val_split,
            meta["files"][self.val_split],
            meta["dtype"],
            cfg.block_size,
            s.seed,
        )
        self.val_batches = val.fixed_batches(s.eval_batches, s.batch_size)
        self.grad_accum = grad_accum_steps(s, cfg.block_size, self.dist.dp_world)
        self.tokens_per_step = s.batch_size * self.grad_accum * cfg.block_size * self.dist.dp_world

        torch.manual_seed(s.seed)
        self.model = GPT(cfg).to(self.device)
        resuming = s.resume == "auto" and list((run_dir / "checkpoints").glob("step_*[0-9]"))
        full_optim = self._load_full_state() if resuming and self.dist.enabled else None
        if s.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        self.forward = distributed.parallelize(self.model, self.dist, recipe.parallel, self.device)
        self.optimizer = make_optimizer(self.model, s, self.device)
        if full_optim is not None:
            from scratchlm.train.sharded_checkpoint import load_full_optimizer_state

            load_full_optimizer_state(self.model, self.optimizer.optimizers, full_optim)
        if s.compile:
            self.forward = torch.compile(self.forward)
        # Tokens/s counts every rank's tokens, so MFU divides by every rank's peak.
        self.peak = peak_flops(self.device, s.peak_flops) * self.dist.world
        self.flops_per_token = self.model.flops_per_token()  # fixed for the run: not per step
        self.step, self.best_val, self.skipped = 0, math.inf, 0
        self.history: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
        if resuming:
            self._resume()
        elif self.dist.main:
            (run_dir / "metrics.jsonl").write_text("")
        distributed.barrier(self.dist)  # rank 0 has written config.yaml and the log
        self.stop_signal: str | None = None
        self.deadline = math.inf  # when time_limit runs out (time.time())
        self.agreed_stop: tuple[str | None, bool] = (None, False)  # (signal, out of time)
        self.external: Any = None  # the TensorBoard / W&B writer while running
        self._metrics: Any = None  # metrics.jsonl, open while running
        self._tokenizer: Any = None  # loaded on the first text sample
        self.tasks: dict[str, Any] = {}  # eval.every_steps: the task items, made once
        if recipe.eval.every_steps:
            from scratchlm.eval.evaluate import hook_tasks

            self._tokenizer = load_tokenizer(run_dir / "tokenizer.json")
            self.tasks = hook_tasks(recipe.eval, tokens_dir, self._tokenizer)

    # ------------------------------------------------------------------ resume and save

    def _resume(self) -> None:
        from scratchlm.train.sharded_checkpoint import is_sharded, load_sharded

        ckpt = latest_checkpoint(self.run_dir)  # its model and state were checked by prepare_run
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        if is_sharded(ckpt):
            strategy = self.dist.strategy
            load_sharded(ckpt, self.model, self.optimizer.optimizers, strategy)
        elif not self.dist.enabled:  # on several processes: done by _load_full_state
            load_weights(self.model, ckpt)
            self.optimizer.load_state_dict(state["optimizer"])
        self.train_data.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.best_val, self.skipped = (
            int(state["step"]),
            float(state["best_val"]),
            int(state["skipped"]),
        )
        # Keep the log up to the checkpoint; what came after it is about to be redone.
        records = [
            json.loads(line)
            for line in (self.run_dir / "metrics.jsonl").read_text().splitlines()
            if line
        ]
        records = [r for r in records if r["step"] <= self.step]
        if self.dist.main:
            atomic_write_text(
                self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records)
            )
        for r in records:
            if "loss" in r:
                self.history["train"].append((r["step"], r["loss"]))
            if "val_loss" in r:
                self.history["val"].append((r["step"], r["val_loss"]))
                self.best_val = min(self.best_val, r["val_loss"])  # saved before its own eval
            for key in (k for k in r if k.startswith("acc/")):
                self.history.setdefault(key, []).append((r["step"], r[key]))
        self._log_line(f"resumed from {ckpt} at step {self.step}")

    def _load_full_state(self) -> dict[str, Any] | None:
        """Resuming a single-process checkpoint on several processes: whole weights into the
        model before it is split, and the optimizer state in the name-keyed full form."""
        from scratchlm.train.sharded_checkpoint import full_optimizer_state, is_sharded

        ckpt = latest_checkpoint(self.run_dir)
        if is_sharded(ckpt):
            return None
        if self.dist.strategy in ("tp", "fsdp+tp"):
            raise StageError(
                f"{ckpt} is a single-process checkpoint; tp and fsdp+tp resume only their own "
                "(sharded) checkpoints: resume it with parallel.strategy ddp or fsdp"
            )
        load_weights(self.model, ckpt)
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        return full_optimizer_state(
            self.model,
            make_optimizer(self.model, self.s, self.device).optimizers,
            state["optimizer"],
        )

    def save(self, val_loss: float | None = None) -> Path:
        state = {
            "step": self.step,
            "data": self.train_data.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            },
            "best_val": self.best_val,
            "skipped": self.skipped,
        }
        meta = {
            "val_loss": val_loss,
            "model": dataclasses.asdict(self.cfg),
            "pretrain": dataclasses.asdict(self.s),
        }
        if self.dist.enabled:
            from scratchlm.train.sharded_checkpoint import save_sharded

            meta["parallel"] = {"strategy": self.dist.strategy, "world": self.dist.world}
            path = save_sharded(
                self.dist,
                self.run_dir,
                self.step,
                self.model,
                self.optimizer.optimizers,
                state,
                meta,
            )
        else:
            state["optimizer"] = self.optimizer.state_dict()
            path = save_checkpoint(self.run_dir, self.step, self.model, state, meta)
        self._prune_checkpoints()
        return path

    def _prune_checkpoints(self) -> None:
        """Keep the last `keep_last` checkpoints and the one with the best validation loss."""
        if not self.dist.main:
            return
        ckpts = sorted((self.run_dir / "checkpoints").glob("step_*[0-9]"))
        best, best_loss = None, math.inf
        for c in ckpts:
            loss = json.loads((c / "meta.json").read_text()).get("val_loss")
            if loss is not None and loss < best_loss:
                best, best_loss = c, loss
        for c in ckpts[: -self.s.keep_last]:
            if c != best:
                shutil.rmtree(c)
        if best is not None:
            atomic_write_json(
                self.run_dir / "checkpoints" / "best.json",
                {"checkpoint": best.name, "val_loss": best_loss},
            )

    # ------------------------------------------------------------------ the step

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss, gradient norm).
        A non-finite loss or gradient skips the update (on_nonfinite=skip) or stops the run."""
        self.optimizer.set_lr_scale(lr_scale(self.step, self.s))
        loss_sum = 0.0
        for micro in range(self.grad_accum):
            x, y = self.train_data.next_batch(self.s.batch_size)
            with distributed.no_sync(self.forward, micro == self.grad_accum - 1):
                with autocast_for(self.device):
                    _, loss = self.forward(x.to(self.device), y.to(self.device))
                (loss / self.grad_accum).backward()  # mean over micro-batches = the big batch's
            loss_sum += loss.item()
        if self.dist.enabled:  # every rank must stop at the same step, or the others hang
            loss, signalled, late = distributed.reduce_step_stats(
                self.dist,
                loss_sum / self.grad_accum,
                bool(self.stop_signal),
                time.time() > self.deadline,
            )
            self.agreed_stop = (self.stop_signal or "a signal" if signalled else None, late)
        else:
            loss = loss_sum / self.grad_accum
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = distributed.clip_grad_norm(params, self.s.grad_clip or math.inf)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.optimizer.zero_grad()
            what = f"loss {loss}, gradient norm {norm} at step {self.step}"
            if self.s.on_nonfinite == "stop":
                ckpts = sorted((self.run_dir / "checkpoints").glob("step_*[0-9]"))
                last = ckpts[-1] if ckpts else "none yet"
                raise StageError(
                    f"pretrain: non-finite {what}; stopped. Last good checkpoint: {last}. "
                    "Lower pretrain.lr, or set pretrain.on_nonfinite=skip"
                )
            self.skipped += 1
            self._log_line(f"skipped a batch: non-finite {what}")
            return loss, norm
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss, norm

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the same validation batches every time."""
        self.model.eval()
        total = 0.0
        for x, y in self.val_batches:
            with autocast_for(self.device):
                _, loss = self.forward(x.to(self.device), y.to(self.device))
            total += loss.item()
        self.model.train()
        return total / len(self.val_batches)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        start, first_step = time.time(), self.step  # a resumed run counts its own steps
        if self.s.time_limit:
            self.deadline = start + self.s.time_limit * 60
        log = self.run_dir / "metrics.jsonl" if self.dist.main else os.devnull
        with open(log, "a") as self._metrics:
            if self.step == 0:
                self._record_val(self.evaluate(), self._task_scores(due=True))
            self._train(start)
        history = self.history["val"]
        seconds = time.time() - start
        return {
            "steps": self.step,
            "parameters": self.model.num_params(),
            "tokens_seen": self.tokens_per_step * self.step,
            "initial_val_loss": round(history[0][1], 4),
            "final_val_loss": round(history[-1][1], 4),
            "best_val_loss": round(self.best_val, 4),
            "val_split": self.val_split,
            "skipped_batches": self.skipped,
            "seconds": round(seconds, 1),
            "tokens_per_second": round(
                self.tokens_per_step * (self.step - first_step) / max(seconds, 1e-9)
            ),
            "checkpoint": str(latest_checkpoint(self.run_dir)),
        }

    def _train(self, start: float) -> None:
        s = self.s
        bar = tqdm(
            total=s.max_steps,
            initial=self.step,
            desc="pretrain",
            unit="step",
            disable=not self.progress,
            mininterval=0.5,
        )
        loggers = self._external_loggers() if self.dist.main else contextlib.nullcontext()
        with self._signals(), bar, loggers as self.external:
            while self.step < s.max_steps:
                t0 = time.time()
                loss, norm = self.train_step()
                self.step += 1
                tok_s = self.tokens_per_step / max(time.time() - t0, 1e-9)
                mfu = self.flops_per_token * tok_s / self.peak
                lr = self.optimizer.param_groups[-1]["lr"]
                self._record(
                    {
                        "step": self.step,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": norm,
                        "tokens_per_second": tok_s,
                        "mfu": mfu,
                    }
                )
                bar.update()
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    lr=f"{lr:.2e}",
                    tok_s=f"{tok_s:,.0f}",
                    mfu=f"{mfu:.0%}",
                    refresh=False,
                )
                out_of_time = bool(s.time_limit) and time.time() - start > s.time_limit * 60
                stop = self.stop_signal
                if self.dist.enabled:
                    stop, out_of_time = self.agreed_stop
                saved = self._checkpoint_and_evaluate(
                    done=self.step == s.max_steps or bool(stop) or out_of_time
                )
                if not self.dist.enabled:  # one process may also stop on a signal mid-evaluation
                    stop = self.stop_signal
                if stop:
                    if not saved:  # the signal came during evaluation or sampling
                        self.save()
                    raise TrainingInterrupted(
                        f"{stop}: saved step {self.step}; continue with --resume"
                    )
                if out_of_time:
                    break

    def _checkpoint_and_evaluate(self, done: bool) -> bool:
        """Save and evaluate as due at this step; True if a checkpoint was saved."""
        s = self.s
        ckpt = None
        if done or (s.checkpoint_every and self.step % s.checkpoint_every == 0):
            ckpt = (
                self.save()
            )  # before evaluating: an evaluation that runs out of memory loses nothing
        scores = self._task_scores(done or self.step % max(self.recipe.eval.every_steps, 1) == 0)
        if done or self.step % s.eval_every == 0:
            val = self.evaluate()
            self.best_val = min(self.best_val, val)
            self._record_val(val, scores)
            self._plot()
            if ckpt is not None:
                self._annotate(ckpt, val)
        elif scores:
            self._record({"step": self.step, **scores})
            self._plot()
        # Sampling runs the model on rank 0 alone: fine for whole replicas, not for shards.
        if (
            s.sample_every
            and self.step % s.sample_every == 0
            and self.dist.main
            and not self.dist.sharded
        ):
            self._sample()
        return ckpt is not None

    @torch.no_grad()
    def _task_scores(self, due: bool) -> dict[str, float]:
        """Accuracy on eval.tasks (the pretraining hook), when it is on and due at this step."""
        if not (self.tasks and due):
            return {}
        from scratchlm.eval.evaluate import hook_scores

        self.model.eval()
        with autocast_for(self.device):
            scores = hook_scores(self.model, self._tokenizer, self.tasks, self.recipe.eval)
        self.model.train()
        return scores

    def _annotate(self, ckpt: Path, val_loss: float) -> None:
        """Add the validation loss, measured after saving, to the checkpoint's meta."""
        if not self.dist.main:
            return
        meta = json.loads((ckpt / "meta.json").read_text()) | {"val_loss": val_loss}
        atomic_write_json(ckpt / "meta.json", meta)
        self._prune_checkpoints()

    # ------------------------------------------------------------------ logging

    def _record(self, record: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()  # a crash loses at most the line being written
        if "loss" in record:
            self.history["train"].append((record["step"], record["loss"]))
        if "val_loss" in record:
            self.history["val"].append((record["step"], record["val_loss"]))
        for key in (k for k in record if k.startswith("acc/")):
            self.history.setdefault(key, []).append((record["step"], record[key]))
        if self.external:
            self.external(record)

    def _record_val(self, val: float, scores: dict[str, float] | None = None) -> None:
        record = {"step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50))}
        self._record(record | (scores or {}))

    def _log_line(self, text: str) -> None:
        if self.progress:
            tqdm.write(f"pretrain: {text}")

    def _plot(self) -> None:
        from scratchlm.train.plots import plot_losses

        if not self.dist.main:
            return

        plot_losses(self.history, self.run_dir / "loss.png", title=self.s.name)
        if scores := {k: v for k, v in self.history.items() if k.startswith("acc/")}:
            from scratchlm.train.plots import plot_scores

            plot_scores(scores, self.run_dir / "tasks.png", title=self.s.name)

    def _sample(self) -> None:
        from scratchlm.infer.generate import generate_text

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.run_dir / "tokenizer.json")
        tok = self._tokenizer
        prompt = self.recipe.generate.prompts[0] if self.recipe.generate.prompts else ""
        self.model.eval()
        text = generate_text(
            self.model,
            tok,
            prompt,
            dataclasses.replace(
                self.recipe.generate, max_new_tokens=min(64, self.recipe.generate.max_new_tokens)
            ),
        )
        self.model.train()
        self._record({"step": self.step, "sample": text})
        self._log_line(f"sample at step {self.step}: {text!r}")

    def _check_loggers(self) -> None:
        import importlib.util

        for name in self.s.loggers:
            module = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(name)
            if module is None:
                raise StageError(
                    f"pretrain.loggers: unknown logger {name!r}; choose from tensorboard, wandb"
                )
            if importlib.util.find_spec(module) is None:
                raise StageError(
                    f"pretrain.loggers has {name}, but the {module} package is not installed: pip install {module}"
                )

    @contextlib.contextmanager
    def _external_loggers(self):
        writers = []
        if "tensorboard" in self.s.loggers:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            writers.append(
                lambda r: [
                    tb.add_scalar(k, v, r["step"])
                    for k, v in r.items()
                    if k != "step" and isinstance(v, float)
                ]
            )
        if "wandb" in self.s.loggers:
            import wandb

            run = wandb.init(
                project="scratchlm",
                name=self.s.name,
                config=self.recipe.to_dict(),
                dir=str(self.run_dir),
            )
            writers.append(
                lambda r: run.log(
                    {k: v for k, v in r.items() if isinstance(v, float)}, step=r["step"]
                )
            )
        try:
            yield (lambda r: [w(r) for w in writers]) if writers else None
        finally:
            if "tensorboard" in self.s.loggers:
                tb.close()
            if "wandb" in self.s.loggers:
                run.finish()

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT / SIGTERM finish the current step, save a checkpoint and stop."""

        def request_stop(signum: int, frame: Any) -> None:
            self.stop_signal = signal.Signals(signum).name

        previous = {}
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def pretrain(
    recipe: Recipe, tokens_dir: Path, tokenizer_path: Path, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Train a model from scratch on `tokens_dir` (or resume it); return a summary of the run.
    Under torchrun every rank calls this; the process group lives as long as the call."""
    try:
        return Trainer(recipe, tokens_dir, tokenizer_path, run_dir, progress).run()
    except RuntimeError as e:
        if not distributed.peer_failure(e):
            raise
        rank = os.environ.get("RANK", "?")
        raise StageError(
            f"rank {rank}: a collective operation failed, so another process probably stopped "
            f"(its own error is above): {str(e).splitlines()[0]}. Restart with --resume "
            "(torchrun --max-restarts N does so from the last checkpoint)"
        ) from e
    finally:
        distributed.teardown()
