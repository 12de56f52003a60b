"""`make bench` runs every benchmark: one whose data is not there says so and is skipped
(exit 0), instead of stopping the rest. The benchmarks themselves never run as tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("bench", ["tokenizer", "curate"])
def test_a_benchmark_without_its_data_is_skipped_with_the_reason(bench, tmp_path):
    env = os.environ | {"SCRATCHLM_SHARED_DATA": str(tmp_path / "nowhere")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{bench}.py")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert line["bench"] == bench and str(tmp_path / "nowhere" / "gutenberg") in line["skipped"]
