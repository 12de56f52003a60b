"""GRPO: reinforcement learning with verifiable rewards (Shao et al., 2024; nanochat's variant).

Each step: `batch_size` prompts, `group_size` sampled replies to each (through the generation
engine, the calculator answering tool calls), a reward of 1 for each reply whose answer the
verifier accepts, group-normalised advantages, and one policy-gradient step (finetune/policy.py):

    prompts -> G replies each -> rewards (eval/answers.py) -> advantages -> loss on the tokens
    the model wrote (not those the tool wrote) -> optimizer step

Tasks come from a JSONL of {"prompt", "answer"} or `builtin:arithmetic:DIGITS:OPERATORS`.
Held-out prompts are scored greedily (pass@1, with a 95% interval) at every evaluation.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from scratchlm import runs
from scratchlm.config import FinetuneSettings
from scratchlm.errors import StageError
from scratchlm.eval.answers import (
    BUILTIN,
    HELDOUT_PROBLEMS,
    TRAIN_PROBLEMS,
    Task,
    builtin_tasks,
    prompt_ids,
    reward,
    score_answers,
)
from scratchlm.finetune import records
from scratchlm.finetune.base import Base, save_chat_run, vocab_params, with_chat_tokens
from scratchlm.finetune.loop import fit, use_lora
from scratchlm.finetune.policy import group_advantages, policy_loss
from scratchlm.finetune.summaries import GRPOSummary
from scratchlm.infer.chat import reply_stop_ids
from scratchlm.infer.generate import generate_rows
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.train.plots import plot_scores


@dataclass
class Sample:
    """One reply: the ids (prompt, then what the model and the tool wrote), which positions
    the model wrote, its reward, and the log-probabilities it was sampled with."""

    ids: list[int]
    prompt_len: int
    written: list[bool]  # per position after the prompt: True where the policy wrote it
    reward: float
    advantage: float = 0.0
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None


def load_tasks(s: FinetuneSettings) -> tuple[list[Task], list[Task], dict[str, list[str]]]:
    """Training and held-out tasks, and the records skipped in each file."""
    if s.data.startswith(BUILTIN):
        train = builtin_tasks(s.data, "train", TRAIN_PROBLEMS, s.seed)
        heldout = builtin_tasks(s.data, "heldout", min(s.eval_prompts, HELDOUT_PROBLEMS), s.seed)
        return train, heldout, {}
    train, heldout, skipped = records.held_out(s, records.to_task)
    if not heldout:
        raise StageError(f"finetune.data={s.data}: no held-out prompts (set val_fraction)")
    return train, heldout[: s.eval_prompts], skipped


def sequence_logprobs(model: torch.nn.Module, samples: list[Sample], pad: int) -> torch.Tensor:
    """log p(token | what came before) for every position after each prompt: (N, T) with T
    the longest reply, zeros past a reply's end."""
    T = max(len(x.ids) for x in samples)
    device = next(model.parameters()).device
    idx = torch.tensor([x.ids + [pad] * (T - len(x.ids)) for x in samples], device=device)
    logits = model(idx[:, :-1])[0].float()
    logp = torch.gather(F.log_softmax(logits, -1), 2, idx[:, 1:, None])[..., 0]
    width = max(len(x.ids) - x.prompt_len for x in samples)
    out = torch.zeros(len(samples), width, device=device)
    for i, x in enumerate(samples):  # reply position j predicts ids[prompt_len + j]
        n = len(x.ids) - x.prompt_len
        out[i, :n] = logp[i, x.prompt_len - 1 : x.prompt_len - 1 + n]
    return out


def written_mask(samples: list[Sample], device: torch.device) -> torch.Tensor:
    width = max(len(x.ids) - x.prompt_len for x in samples)
    rows = [x.written + [False] * (width - len(x.written)) for x in samples]
    return torch.tensor(rows, dtype=torch.bool, device=device)


class Rollouts:
    """The samples of each step: drawn every `updates_per_batch` steps, kept in between."""

    def __init__(self, model, tok, template, tasks, s: FinetuneSettings, reference) -> None:  # noqa: ANN001
        self.model, self.tok, self.template, self.tasks, self.s = model, tok, template, tasks, s
        self.reference = reference  # the starting model (for the KL), or None
        self.stops = reply_stop_ids(template, tok)
        self.rng = random.Random(s.seed)
        self.samples: list[Sample] = []

    def __call__(self, step: int) -> list[Sample]:
        if step % self.s.updates_per_batch == 0:
            self.samples = self.draw(step)
        return self.samples

    @torch.no_grad()
    def draw(self, step: int) -> list[Sample]:
        s, tok = self.s, self.tok
        self.model.eval()
        tasks = self.rng.sample(self.tasks, min(s.batch_size, len(self.tasks)))
        rows = []
        for t in tasks:
            ids = prompt_ids(tok, self.template, t.prompt, s.system)
            for g in range(s.group_size):
                seed = s.seed * 1_000_003 + step * 997 + len(rows) + g
                sampling = Sampling(s.rl_temperature)
                rows.append(
                    Row(ids, s.max_new_tokens, sampling, seed, (), self.stops, tools=s.tools)
                )
        for _ in generate_rows(self.model, tok, rows, max_batch=len(rows)):
            pass
        samples = [self._sample(row, t) for row, t in zip(rows, _repeat(tasks, s.group_size), strict=True)]  # fmt: skip
        rewards = torch.tensor([x.reward for x in samples]).view(len(tasks), s.group_size)
        for x, a in zip(
            samples, group_advantages(rewards, s.advantage).flatten().tolist(), strict=True
        ):
            x.advantage = a
        useful = [x for x in samples if x.advantage != 0.0 and len(x.ids) > x.prompt_len]
        if useful:  # a group whose replies all scored alike teaches nothing: left out
            old = sequence_logprobs(self.model, useful, tok.eot_id)
            ref = sequence_logprobs(self.reference, useful, tok.eot_id) if self.reference else None
            for i, x in enumerate(useful):
                x.old_logprobs = old[i]
                x.ref_logprobs = ref[i] if ref is not None else None
        self.model.train()
        self.last = samples
        return useful

    def _sample(self, row: Row, task: Task) -> Sample:
        reply = row.ids[len(row.prompt) :]
        written = [True] * len(reply)
        for a, b in row.tool_spans:
            for j in range(a - len(row.prompt), b - len(row.prompt)):
                written[j] = False
        if row.stop_token is not None:  # the model chose to stop: that choice is learned too
            reply, written = reply + [row.stop_token], written + [True]
        text = self.tok.decode(row.ids[len(row.prompt) :])
        r = reward(text, task.answer, self.s.answer_pattern)
        ids, block = row.prompt + reply, self.model.cfg.block_size
        if len(ids) > block:  # past the context (tool results are read in beyond max_new_tokens):
            # no reward, and the loss sees what fits, so a reply learns to fit
            ids, written, r = ids[:block], written[: max(0, block - len(row.prompt))], 0.0
        return Sample(ids, len(row.prompt), written, r)


def plot_curves(metrics: Path, png: Path, title: str) -> None:
    """Mean reward per step and held-out pass@1 per evaluation, from metrics.jsonl."""
    curves: dict[str, list[tuple[int, float]]] = {"reward (sampled)": [], "pass@1 (held out)": []}
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if "reward" in r:
            curves["reward (sampled)"].append((r["step"], r["reward"]))
        if "eval" in r:
            curves["pass@1 (held out)"].append((r["step"], r["eval"]["acc"]))
    plot_scores({k: v for k, v in curves.items() if v}, png, title=title)


def _repeat(tasks: list[Task], times: int) -> list[Task]:
    return [t for t in tasks for _ in range(times)]


def run(
    s: FinetuneSettings, base: Base, out: Path, device: torch.device, progress: bool
) -> GRPOSummary:
    """GRPO on a chat model: sampled replies, verified answers, policy-gradient steps; pass@1
    on held-out prompts at every evaluation."""
    train, heldout, skipped = load_tasks(s)
    template = ChatTemplate()
    tok, added = with_chat_tokens(base, tools=s.tools)
    model = base.model.to(device)
    reference = copy.deepcopy(model).eval() if s.kl_coef else None
    if reference is not None:
        reference.requires_grad_(False)
    if s.lora_rank:
        use_lora(model, s, vocab_params(model, added))
    rollouts = Rollouts(model, tok, template, train, s, reference)

    def loss_of(samples: list[Sample]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = rollouts.last
        stats = {
            "reward": sum(x.reward for x in batch) / len(batch),
            "reply_tokens": sum(max(0, len(x.ids) - x.prompt_len) for x in batch) / len(batch),
        }
        if not samples:  # every group scored alike: nothing to learn from this batch
            zero = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return zero, stats | {"kl": 0.0, "clip_fraction": 0.0}
        logp = sequence_logprobs(model, samples, tok.eot_id)
        old = torch.stack([x.old_logprobs for x in samples])
        ref = torch.stack([x.ref_logprobs for x in samples]) if reference is not None else None
        adv = torch.tensor([x.advantage for x in samples], device=logp.device)
        mask = written_mask(samples, logp.device)
        loss, extra = policy_loss(logp, old, adv, mask, s.rl_loss, s.clip, ref, s.kl_coef)
        return loss, stats | extra

    def evaluate(step: int) -> dict[str, Any]:
        scores = score_answers(
            model, tok, template, heldout, system=s.system, tools=s.tools,
            pattern=s.answer_pattern, max_new_tokens=s.max_new_tokens,
        )  # fmt: skip
        return scores.summary()

    steps = s.max_steps or max(1, round(s.epochs * len(train) / s.batch_size))
    evals = fit(model, steps, rollouts, loss_of, evaluate, s, out / runs.METRICS, progress)
    plot_curves(out / runs.METRICS, out / "grpo.png", f"GRPO on {s.data}")
    meta = {"task": "grpo", "pass@1": evals[-1]["acc"]}
    save_chat_run(out, model, tok, template, s, steps, meta, base)
    return GRPOSummary(
        task="grpo",
        base=base.source,
        steps=steps,
        truncated={},
        skipped_records=records.skipped_summary(skipped),
        prompts={"train": len(train), "heldout": len(heldout)},
        added_tokens=added,
        initial={k: evals[0][k] for k in ("items", "acc", "acc_ci")},
        final={k: evals[-1][k] for k in ("items", "acc", "acc_ci")},
        examples={"before": evals[0]["example"], "after": evals[-1]["example"]},
    )
