"""The arithmetic of policy-gradient RL with verifiable rewards (GRPO), on plain tensors.

A step samples G completions of each of P prompts, scores each with a verifier (reward 1 for a
right answer, 0 otherwise), and pushes up the log-probability of the completions that did better
than their group's average:

    advantage[p, g] = (reward[p, g] - mean_g reward[p]) / (std_g reward[p] + eps)    "std"
                    =  reward[p, g] - mean_g reward[p]                                 "mean"

A group whose completions all scored alike teaches nothing (advantages 0). The loss of each
generated token t of a completion with advantage A, where ratio = p_now(t) / p_sampled(t):

    clipped    -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)     (PPO's, as GRPO uses it)
    reinforce  -A * log p_now(t)                                      (nanochat's: on-policy)

plus, optionally, kl_coef * KL(now || reference) with the k3 estimator
exp(ref - now) - (ref - now) - 1, which is >= 0 and unbiased. The loss is the mean over every
generated token of the batch (tokens the tool wrote are not the policy's and are masked out).
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, normalize: str = "std", eps: float = 1e-6
) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages, centred within each prompt's group."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if normalize == "mean":
        return centred
    if normalize != "std":
        raise ValueError(f"normalize={normalize!r}: std or mean")
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "clipped",
    clip: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss over (N, T) per-token log-probabilities of N completions; `advantages` is (N,),
    `mask` (N, T) marks the tokens the policy generated. Returns (loss, stats)."""
    adv = advantages[:, None].to(logprobs.dtype)
    if kind == "clipped":
        ratio = torch.exp(logprobs - old_logprobs)
        unclipped = ratio * adv
        clipped = ratio.clamp(1 - clip, 1 + clip) * adv
        per_token = -torch.minimum(unclipped, clipped)
        clip_frac = ((ratio - 1).abs() > clip).float()
    elif kind == "reinforce":
        per_token = -adv * logprobs
        clip_frac = torch.zeros_like(logprobs)
    else:
        raise ValueError(f"kind={kind!r}: clipped or reinforce")
    m = mask.to(logprobs.dtype)
    count = m.sum().clamp(min=1)
    stats = {"clip_fraction": float((clip_frac * m).sum() / count)}
    if ref_logprobs is not None:
        log_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ratio) - log_ratio - 1
        stats["kl"] = float((kl.detach() * m).sum() / count)
        if kl_coef:
            per_token = per_token + kl_coef * kl
    return (per_token * m).sum() / count, stats
