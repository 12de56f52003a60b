from __future__ import annotations

import pytest
import torch

from scratchlm.config import ModelConfig, PretrainSettings
from scratchlm.model.gpt import GPT
from scratchlm.train.checkpoint import latest_checkpoint, load_weights, save_checkpoint
from scratchlm.train.optim import lr_at, make_optimizer


def test_schedule_at_known_steps():
    s = PretrainSettings(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, s) == pytest.approx(0.1)
    assert lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(10, s) == pytest.approx(1.0)
    assert lr_at(60, s) == pytest.approx(0.55)  # halfway through the cosine
    assert lr_at(110, s) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=True))
    opt = make_optimizer(model, PretrainSettings(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_checkpoint_round_trip_and_atomicity(tmp_path):
    cfg = ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    save_checkpoint(tmp_path, 5, model, None, {})
    again = GPT(cfg)
    load_weights(again, latest_checkpoint(tmp_path))
    idx = torch.randint(50, (2, 8))
    assert torch.equal(model(idx)[0], again(idx)[0])
    assert again.lm_head.weight is again.wte.weight

    # A crash in the middle of writing step 9 leaves step 5 as the latest, and no step_000009.
    class Boom(Exception):
        pass

    def exploding_state_dict(*a, **k):
        raise Boom

    model.state_dict = exploding_state_dict
    with pytest.raises(Boom):
        save_checkpoint(tmp_path, 9, model, None, {})
    assert latest_checkpoint(tmp_path).name == "step_000005"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000005"]
