"""Interop with EleutherAI's lm-eval: the same items, scored by the standard harness.

`lm_eval_task(jsonl, name, out_dir)` writes a task YAML over a local JSONL file of
{"context", "choices", "answer"} items (the `mc` format); then

    scratchlm export hf RUN OUT
    lm_eval --model hf --model_args pretrained=OUT --include_path DIR --tasks NAME

scores the same requests as `scratchlm eval RUN --task mc:ITEMS.jsonl` (tests/test_eval_lmeval.py
checks that every log-likelihood agrees).
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.io import atomic_write_text


def lm_eval_task(jsonl: Path, name: str, out_dir: Path) -> Path:
    """Write DIR/NAME.yaml: a multiple_choice task over `jsonl`, with lm-eval's defaults (target
    delimiter " ", acc and acc_norm), so its numbers are comparable with ours."""
    yaml_text = "\n".join(
        [
            f"task: {name}",
            "dataset_path: json",
            f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(Path(jsonl).resolve()))}}}}}",
            "test_split: test",
            "output_type: multiple_choice",
            'doc_to_text: "{{context}}"',
            "doc_to_choice: choices",
            "doc_to_target: answer",
            "metric_list:",
            "  - {metric: acc, aggregation: mean, higher_is_better: true}",
            "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}",
            "",
        ]
    )
    path = Path(out_dir) / f"{name}.yaml"
    atomic_write_text(path, yaml_text)
    return path
