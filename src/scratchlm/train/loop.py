"""The pretraining loop: next-token prediction on token shards, exactly resumable.

    Trainer(recipe, tokens, tokenizer, run).run()    one process, or every rank under torchrun

The run folder's layout is runs/'s; what a checkpoint holds, and keeping the right ones, is
checkpointer.py's; metrics.jsonl and the plots are metrics.py's; spreading the model over
processes is distributed.py's; fixing and checking the settings is prepare.py's. What is left here: build the model, data and optimizer, take
steps, evaluate, and stop cleanly on a signal or a time limit. On CPU, a run killed at any
moment and resumed with `resume: auto` ends with exactly the same weights as one never
interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from scratchlm import runs
from scratchlm.config import Recipe
from scratchlm.device import (
    autocast_for,
    resolve_device,
    rng_state,
    set_rng_state,
    set_threads,
    to_device,
)
from scratchlm.errors import StageError
from scratchlm.eval.evaluate import hook_scores, hook_tasks
from scratchlm.infer.generate import generate_text
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.shards import load_meta
from scratchlm.tokenizer.tokenizer import Tokenizer, load_tokenizer
from scratchlm.train import distributed
from scratchlm.train.checkpointer import Checkpointer
from scratchlm.train.data import TokenData
from scratchlm.train.metrics import MetricsLog, PretrainSummary, check_loggers
from scratchlm.train.mfu import MFUMeter
from scratchlm.train.optim import lr_scale, make_optimizer
from scratchlm.train.prepare import global_batch_meta, grad_accum_steps, prepare_run
from scratchlm.train.sharded_checkpoint import load_full_optimizer_state


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
        device = resolve_device(s.device, "pretrain.device")
        distributed.check_settings(recipe.parallel, recipe.model, s, world, device.type)
        check_loggers(s.loggers)  # parallel settings and loggers are checked before any write
        self.run_dir = run_dir
        recipe, resume_from = prepare_run(recipe, tokens_dir, tokenizer_path, run_dir, main)
        self.recipe, self.cfg = recipe, recipe.model
        cfg = recipe.model
        self.dist, self.device = distributed.setup(recipe.parallel, device)
        set_threads(s.threads)
        self.checkpointer = Checkpointer(
            run_dir, self.dist, s.keep_last, resume_from, s.trust_pickled_checkpoints
        )
        self.metrics = MetricsLog(run_dir, self.dist.main, s.name, progress and main)
        self._load_data(tokens_dir, resume_from)

        torch.manual_seed(s.seed)
        self.model = GPT(cfg).to(self.device)
        full_optim = None
        if resume_from is not None and self.dist.enabled:
            full_optim = self.checkpointer.full_state_for_ranks(
                self.model, lambda: make_optimizer(self.model, s, self.device)
            )
        self.forward = distributed.parallelize(
            self.model, self.dist, recipe.parallel, self.device, s.activation_checkpointing
        )
        self.optimizer = make_optimizer(self.model, s, self.device)
        if full_optim is not None:
            load_full_optimizer_state(self.model, self.optimizer.optimizers, full_optim)
        if s.compile:
            self.forward = torch.compile(self.forward)
        # Tokens/s counts every rank's tokens, so MFU divides by every rank's peak.
        self.mfu = MFUMeter(
            self.device, s.peak_flops, self.model.flops_per_token(), self.dist.world
        )
        self.step, self.best_val, self.skipped = 0, math.inf, 0
        if resume_from is not None:
            self._resume()
        else:
            self.metrics.start()
        distributed.barrier(self.dist)  # rank 0 has written config.yaml and the log
        self.stop_signal: str | None = None
        self.deadline = math.inf  # when time_limit runs out (time.time())
        self.agreed_stop: tuple[str | None, bool] = (None, False)  # (signal, out of time)
        self._tokenizer: Tokenizer | None = None  # loaded on first use
        self.tasks: dict[str, Any] = {}  # eval.every_steps: the task items, made once
        if recipe.eval.every_steps:
            self.tasks = hook_tasks(recipe.eval, tokens_dir, self.tokenizer())

    def _load_data(self, tokens_dir: Path, resume_from: Path | None) -> None:
        s, cfg, meta = self.s, self.cfg, load_meta(tokens_dir)

        def split(name: str, rank: int = 0, world: int = 1) -> TokenData:
            files = meta["files"][name]
            return TokenData(
                tokens_dir, name, files, meta["dtype"], cfg.block_size, s.seed, rank, world
            )

        self.train_data = split("train", self.dist.dp_rank, self.dist.dp_world)
        self.val_split = "val" if meta["files"]["val"] else "train"
        self.val_batches = split(self.val_split).fixed_batches(s.eval_batches, s.batch_size)
        self.grad_accum = grad_accum_steps(
            s, cfg.block_size, self.dist.dp_world, resume_from, self.metrics.say
        )
        self.tokens_per_step = s.batch_size * self.grad_accum * cfg.block_size * self.dist.dp_world

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.run_dir / runs.TOKENIZER)
        return self._tokenizer

    # ------------------------------------------------------------------ resume and save

    def _resume(self) -> None:
        state = self.checkpointer.restore(self.model, self.optimizer)
        self.train_data.load_state_dict(state["data"])
        set_rng_state(state["rng"], self.device)
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self.best_val = min(float(state["best_val"]), self.metrics.resume(self.step))
        self.metrics.say(f"resumed from {self.checkpointer.latest()} at step {self.step}")

    def save(self) -> Path:
        state = {
            "step": self.step,
            "data": self.train_data.state_dict(),
            "rng": rng_state(self.device),
            "best_val": self.best_val,
            "skipped": self.skipped,
        }
        meta = {
            "val_loss": None,
            "model": dataclasses.asdict(self.cfg),
            "pretrain": dataclasses.asdict(self.s),
            **global_batch_meta(self.s, self.grad_accum, self.dist.dp_world),
        }
        return self.checkpointer.save(self.step, self.model, self.optimizer, state, meta)

    # ------------------------------------------------------------------ the step

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss, gradient norm).
        A non-finite loss or gradient skips the update (on_nonfinite=skip) or stops the run."""
        self.optimizer.set_lr_scale(lr_scale(self.step, self.s))
        # The losses stay on the device: the step waits for the GPU once, when the gradient
        # norm is read (.item() waits for all the work queued before it), not per micro-batch.
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = self.train_data.next_batch(self.s.batch_size)
            x, y = to_device(x, self.device), to_device(y, self.device)
            with distributed.no_sync(self.forward, micro == self.grad_accum - 1):
                with autocast_for(self.device):
                    _, loss = self.forward(x, y)
                (loss / self.grad_accum).backward()  # mean over micro-batches = the big batch's
            loss_sum += loss.detach()
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = distributed.clip_grad_norm(params, self.s.grad_clip or math.inf)
        if self.dist.enabled:  # every rank must stop at the same step, or the others hang
            loss, signalled, late = distributed.reduce_step_stats(
                self.dist,
                loss_sum.item() / self.grad_accum,
                bool(self.stop_signal),
                time.time() > self.deadline,
            )
            self.agreed_stop = (self.stop_signal or "a signal" if signalled else None, late)
        else:
            loss = loss_sum.item() / self.grad_accum
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.optimizer.zero_grad()
            what = f"loss {loss}, gradient norm {norm} at step {self.step}"
            if self.s.on_nonfinite == "stop":
                last = self.checkpointer.describe_latest()
                raise StageError(
                    f"pretrain: non-finite {what}; stopped. Last good checkpoint: {last}. "
                    "Lower pretrain.lr, or set pretrain.on_nonfinite=skip"
                )
            self.skipped += 1
            self.metrics.say(f"skipped a batch: non-finite {what}")
            return loss, norm
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss, norm

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the same validation batches every time."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for x, y in self.val_batches:
            with autocast_for(self.device):
                _, loss = self.forward(to_device(x, self.device), to_device(y, self.device))
            total += loss.float()
        self.model.train()
        return total.item() / len(self.val_batches)

    # ------------------------------------------------------------------ the loop

    def run(self) -> PretrainSummary:
        start, first_step = time.time(), self.step  # a resumed run counts its own steps
        if self.s.time_limit:
            self.deadline = start + self.s.time_limit * 60
        with self.metrics.open(self.s.loggers, self.recipe.to_dict()):
            if self.step == 0:
                self._record_val(self.evaluate(), self._task_scores(due=True))
            elif self._evaluation_owed():  # killed after its last save, before evaluating it
                self._validate(self._task_scores(due=True), self.checkpointer.latest())
            self._train(start)
        history = self.metrics.history["val"]
        seconds = time.time() - start
        return PretrainSummary(
            steps=self.step,
            parameters=self.model.num_params(),
            tokens_seen=self.tokens_per_step * self.step,
            initial_val_loss=round(history[0][1], 4),
            final_val_loss=round(history[-1][1], 4),
            best_val_loss=round(self.best_val, 4),
            val_split=self.val_split,
            skipped_batches=self.skipped,
            seconds=round(seconds, 1),
            tokens_per_second=round(
                self.tokens_per_step * (self.step - first_step) / max(seconds, 1e-9)
            ),
            checkpoint=str(self.checkpointer.latest()),
        )

    def _train(self, start: float) -> None:
        s = self.s
        bar = tqdm(
            total=s.max_steps,
            initial=self.step,
            desc="pretrain",
            unit="step",
            disable=not self.metrics.progress,
            mininterval=0.5,
        )
        with self._signals(), bar:
            while self.step < s.max_steps:
                t0 = time.time()
                loss, norm = self.train_step()
                self.step += 1
                tok_s = self.tokens_per_step / max(time.time() - t0, 1e-9)
                mfu = self.mfu(tok_s)
                if self.mfu.raised:
                    self.metrics.say(self.mfu.raised)
                    self.mfu.raised = None
                lr = self.optimizer.param_groups[-1]["lr"]
                self.metrics.record(
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
            ckpt = self.save()  # before evaluating: one that runs out of memory loses nothing
        scores = self._task_scores(done or self.step % max(self.recipe.eval.every_steps, 1) == 0)
        if done or self.step % s.eval_every == 0:
            self._validate(scores, ckpt)
        elif scores:
            self.metrics.record({"step": self.step, **scores})
            self.metrics.plot()
        # Sampling runs the model on rank 0 alone: fine for whole replicas, not for shards.
        if (
            s.sample_every
            and self.step % s.sample_every == 0
            and self.dist.main
            and not self.dist.sharded
        ):
            self._sample()
        return ckpt is not None

    def _validate(self, scores: dict[str, float], ckpt: Path | None) -> None:
        """Validation loss now: logged with the task `scores`, plotted, added to `ckpt`."""
        val = self.evaluate()
        self.best_val = min(self.best_val, val)
        self._record_val(val, scores)
        self.metrics.plot()
        if ckpt is not None:
            self.checkpointer.annotate(ckpt, val)

    def _evaluation_owed(self) -> bool:
        """Resumed at a step due for evaluation whose evaluation the log does not hold."""
        due = self.step == self.s.max_steps or self.step % self.s.eval_every == 0
        return due and all(step != self.step for step, _ in self.metrics.history["val"])

    @torch.no_grad()
    def _task_scores(self, due: bool) -> dict[str, float]:
        """Accuracy on eval.tasks (the pretraining hook), when it is on and due at this step."""
        if not (self.tasks and due):
            return {}

        self.model.eval()
        with autocast_for(self.device):
            scores = hook_scores(self.model, self.tokenizer(), self.tasks, self.recipe.eval)
        self.model.train()
        return scores

    def _record_val(self, val: float, scores: dict[str, float] | None = None) -> None:
        record = {"step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50))}
        self.metrics.record(record | (scores or {}))

    def _sample(self) -> None:
        tok = self.tokenizer()
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
        self.metrics.record({"step": self.step, "sample": text})
        self.metrics.say(f"sample at step {self.step}: {text!r}")

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
) -> PretrainSummary:
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
