"""Files we write get the permissions the user's umask gives any new file, weights included
(safetensors creates its files 0600 on its own)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scratchlm import runs
from scratchlm.export.hf import export_run
from scratchlm.model.lora import apply_lora, save_lora


@pytest.fixture
def umask_002():
    old = os.umask(0o002)  # group-writable: a mode no default would give by accident
    yield 0o664
    os.umask(old)


def modes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_weights_and_exports_follow_the_umask(tiny_run, tmp_path, umask_002):
    loaded = runs.load_model(tiny_run)
    ckpt = runs.save_checkpoint(tmp_path / "run", 1, loaded.model, {"val_loss": None})
    exported = tmp_path / "hf"
    export_run(tiny_run, exported)
    apply_lora(loaded.model, ["attn.qkv"], 2, 4.0)
    save_lora(loaded.model, tmp_path / "adapter.safetensors")
    found = modes(ckpt) | modes(exported) | {"adapter": modes(tmp_path)["adapter.safetensors"]}
    assert "model.safetensors" in found and "config.json" in found
    assert {name: mode for name, mode in found.items() if mode != umask_002} == {}
