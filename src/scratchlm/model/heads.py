"""Heads on top of the transformer: a classifier reading the last real token's hidden state."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from scratchlm.model.gpt import GPT


def last_token_index(
    attention_mask: torch.Tensor | None, B: int, T: int, device: torch.device
) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding alike."""
    if attention_mask is None:
        return torch.full((B,), T - 1, device=device)
    positions = torch.arange(T, device=device).expand(B, T)
    return positions.masked_fill(~attention_mask.bool(), -1).amax(dim=-1)


class GPTClassifier(nn.Module):
    """Sequence classification: a causal model's last real token has read the whole text, so
    its hidden state feeds a linear layer with one output per class (no bias, as Hugging
    Face's *ForSequenceClassification `score` layer, so the head exports as it is)."""

    def __init__(self, backbone: GPT, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.cfg.n_embd, num_classes, bias=False)
        nn.init.normal_(self.head.weight, std=backbone.cfg.init_std)

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape
        h = self.backbone.hidden_states(idx, attention_mask=attention_mask)
        last = last_token_index(attention_mask, B, T, idx.device)
        logits = self.head(h[torch.arange(B, device=idx.device), last])
        if labels is None:
            return logits, None
        return logits, F.cross_entropy(logits.float(), labels, weight=class_weights)
