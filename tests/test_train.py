from __future__ import annotations

import pytest
import torch

from scratchlm import runs
from scratchlm.config import ModelConfig, PretrainSettings
from scratchlm.model.gpt import GPT
from scratchlm.train.optim import lr_at, make_optimizer


def test_schedule_at_known_steps():
    s = PretrainSettings(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, s) == pytest.approx(0.1)
    assert lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(10, s) == pytest.approx(1.0)
    assert lr_at(60, s) == pytest.approx(0.55)  # halfway through the cosine
    assert lr_at(110, s) == pytest.approx(0.1)


def test_warmup_stable_decay_at_known_steps():
    s = PretrainSettings(
        lr=2.0, min_lr_ratio=0.0, warmup_steps=10, max_steps=100, schedule="wsd", decay_fraction=0.2
    )
    assert lr_at(4, s) == pytest.approx(1.0)  # warming up: (4 + 1) / 10 of the peak
    assert lr_at(10, s) == lr_at(79, s) == pytest.approx(2.0)  # stable until the last 20 steps
    assert lr_at(90, s) == pytest.approx(1.0)  # halfway down the linear decay
    assert lr_at(100, s) == pytest.approx(0.0)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16))
    opt = make_optimizer(model, PretrainSettings(optimizer="muon"), torch.device("cpu"))
    muon, adamw = opt.optimizers
    muon_params = {id(p) for g in muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon_params) == (name.startswith("blocks.") and p.dim() == 2), name
    opt.set_lr_scale(0.5)
    assert muon.param_groups[0]["lr"] == pytest.approx(0.01) and adamw.param_groups[0][
        "lr"
    ] == pytest.approx(5e-4)


def test_weight_decay_only_on_matrices():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=True))
    opt = make_optimizer(model, PretrainSettings(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_checkpoint_round_trip_and_atomicity(tmp_path):
    cfg = ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    runs.save_checkpoint(tmp_path, 5, model, {})
    again = GPT(cfg)
    runs.load_weights(again, runs.latest_checkpoint(tmp_path))
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
        runs.save_checkpoint(tmp_path, 9, model, {})
    assert runs.latest_checkpoint(tmp_path).name == "step_000005"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000005"]
