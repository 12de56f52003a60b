"""GRPO's advantages and losses on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.finetune.policy import group_advantages, policy_loss


def test_advantages_are_centred_and_scaled_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    adv = group_advantages(rewards, eps=0.0)
    # group 0: mean 0.5, std 0.5 -> +-1; group 1: all alike -> 0 (0/0 guarded by eps below)
    assert adv[0].tolist() == [1.0, -1.0, -1.0, 1.0]
    # group 2: mean 0.25, std sqrt(0.1875)
    s = math.sqrt(0.1875)
    assert adv[2].tolist() == pytest.approx([-0.25 / s] * 3 + [0.75 / s])
    assert group_advantages(rewards)[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert group_advantages(rewards, "mean")[2].tolist() == [-0.25, -0.25, -0.25, 0.75]
    with pytest.raises(ValueError, match="std or mean"):
        group_advantages(rewards, "max")


def test_on_policy_clipped_loss_is_minus_the_mean_advantage_per_token():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.2, 0.4, 0.3]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # the first completion has 2 tokens
    adv = torch.tensor([2.0, -1.0])
    loss, stats = policy_loss(logp, logp, adv, mask)
    # ratio 1 everywhere: per-token loss -A; mean over the 5 real tokens
    assert loss.item() == pytest.approx(-(2 * 2 + 3 * -1) / 5)
    assert stats["clip_fraction"] == 0.0


def test_clipping_stops_the_push_beyond_the_trust_region():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    now = torch.log(torch.tensor([[0.8, 0.3]]))  # ratios 1.6 and 0.6
    mask = torch.ones(1, 2)
    loss, stats = policy_loss(now, old, torch.tensor([1.0]), mask, clip=0.2)
    # A > 0: min(1.6, 1.2) = 1.2 and min(0.6, 0.8) = 0.6 -> -(1.2 + 0.6) / 2
    assert loss.item() == pytest.approx(-0.9)
    assert stats["clip_fraction"] == 1.0
    loss, _ = policy_loss(now, old, torch.tensor([-1.0]), mask, clip=0.2)
    # A < 0: min(-1.6, -1.2) = -1.6 and min(-0.6, -0.8) = -0.8 -> (1.6 + 0.8) / 2
    assert loss.item() == pytest.approx(1.2)


def test_clipped_gradient_vanishes_outside_the_region_and_reinforce_does_not():
    old = torch.log(torch.tensor([[0.5]]))
    now = torch.log(torch.tensor([[0.8]])).requires_grad_(True)
    policy_loss(now, old, torch.tensor([1.0]), torch.ones(1, 1))[0].backward()
    assert now.grad.item() == 0.0  # ratio 1.6 > 1.2 with A > 0: clipped, no gradient
    now.grad = None
    policy_loss(now, old, torch.tensor([1.0]), torch.ones(1, 1), kind="reinforce")[0].backward()
    assert now.grad.item() == pytest.approx(-1.0)  # d(-A log p)/d log p = -A


def test_kl_penalty_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.5, 0.25]]))
    mask = torch.ones(1, 2)
    _, same = policy_loss(logp, logp, torch.tensor([0.0]), mask, ref_logprobs=logp)
    assert same["kl"] == 0.0
    loss, stats = policy_loss(logp, logp, torch.tensor([0.0]), mask, ref_logprobs=ref, kl_coef=0.5)
    # token 2: r = log(0.25 / 0.5); k3 = e^r - r - 1 = 0.5 + ln 2 - 1
    k3 = 0.5 + math.log(2) - 1
    assert stats["kl"] == pytest.approx(k3 / 2)
    assert loss.item() == pytest.approx(0.5 * k3 / 2)


# --------------------------------------------------------------------------- the verifier


def test_the_verifier_reads_the_last_answer_and_compares_numbers_as_numbers():
    from scratchlm.eval.answers import extract_answer, reward

    assert extract_answer("12 and then 444.") == "444"
    assert extract_answer("no number here") is None
    assert reward("The answer is 3.50", "3.5") == 1.0
    assert reward("The answer is 35", "3.5") == 0.0
    assert reward("-12", "-12") == 1.0
    assert reward("answer: yes", "yes", r"answer: (\w+)") == 1.0
    assert reward("answer: no", "yes", r"answer: (\w+)") == 0.0


def test_a_tool_result_is_not_the_models_answer():
    from scratchlm.eval.answers import reward

    called = "<|tool|>123+456<|/tool|><|result|>579<|/result|>"
    assert reward(called + "579", "579") == 1.0
    assert reward(called, "579") == 0.0  # stopped before answering
    assert reward(called + "578", "579") == 0.0


def test_tasks_from_records_and_builtin_specs():
    from scratchlm.errors import StageError
    from scratchlm.eval.answers import builtin_tasks, parse_builtin
    from scratchlm.finetune.records import RecordError, to_task

    assert to_task({"prompt": "2+2?", "answer": 4}).answer == "4"
    for bad in ({"prompt": "", "answer": 1}, {"prompt": "x"}, {"prompt": "x", "answer": True}, []):
        with pytest.raises(RecordError):
            to_task(bad)
    assert parse_builtin("builtin:arithmetic") == (3, "+")
    assert parse_builtin("builtin:arithmetic:2:+-*") == (2, "+-*")
    for bad in ("builtin:arithmetic:x", "builtin:arithmetic:3:/", "builtin:arithmetic:0"):
        with pytest.raises(StageError, match="builtin:arithmetic"):
            parse_builtin(bad)
    train = builtin_tasks("builtin:arithmetic:2:+", "train", 50, seed=0)
    heldout = builtin_tasks("builtin:arithmetic:2:+", "heldout", 50, seed=0)
    assert not {t.prompt for t in train} & {t.prompt for t in heldout}
    assert all(eval(t.prompt.removeprefix("What is ").rstrip("?")) == int(t.answer) for t in train)


# --------------------------------------------------------------------------- the trainer


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_grpo_raises_the_reward_on_a_tiny_task_within_a_few_steps(tmp_path, lora_rank):
    """An untrained model answers "7" by chance now and then; GRPO makes it the habit, with
    every weight training or only LoRA adapters."""
    import json

    from scratchlm.config import FinetuneSettings
    from scratchlm.finetune.base import Base
    from scratchlm.finetune.grpo import run
    from scratchlm.model.config import ModelConfig
    from scratchlm.model.gpt import GPT
    from scratchlm.tokenizer.tokenizer import CharTokenizer

    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": 7}) + "\n" for i in range(40)))
    tok = CharTokenizer("0123456789q")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size + 8, block_size=32, n_layer=1, n_head=2, n_embd=32))  # fmt: skip
    start = {k: v.clone() for k, v in model.state_dict().items()}
    s = FinetuneSettings(
        task="grpo", data=str(data), max_steps=40, batch_size=4, group_size=8,
        lr=3e-2 if lora_rank else 1e-2, lora_rank=lora_rank, warmup_steps=0, eval_every=40,
        lora_targets=["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj", "lm_head"],
        max_new_tokens=3, eval_prompts=8, tools=False, seed=0,
    )  # fmt: skip
    base = Base(model, tok, {"kind": "run", "checkpoint": str(tmp_path / "base")})
    (tmp_path / "out").mkdir()  # finetune() makes it (atomically) before calling a task
    summary = run(s, base, tmp_path / "out", torch.device("cpu"), progress=False)
    rewards = [
        json.loads(line)["reward"]
        for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        if "reward" in line
    ]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, rewards
    assert summary.final["acc"] > summary.initial["acc"]
    assert (tmp_path / "out" / "grpo.png").is_file()
    if lora_rank:  # the base weights are as they were: only the adapters learned (and the
        now = model.state_dict()  # embeddings, which the chat tokens added to the vocabulary)
        assert any(".lora_b" in k for k in now) and summary.added_tokens
        for k, v in start.items():
            if k.startswith(("wte.", "lm_head.")):
                continue
            assert torch.equal(now.get(k, now.get(k.replace(".weight", ".base.weight"))), v), k
