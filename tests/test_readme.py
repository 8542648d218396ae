"""The README's quick-start code blocks run as written (in order, sharing one namespace, as a reader pastes them)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).parents[1] / "README.md"


def quick_start_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Quick start"):text.index("## What is in the box")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_quick_start_has_its_blocks():
    assert len(quick_start_blocks()) >= 3


def test_quick_start_runs_as_written(capsys):
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(quick_start_blocks()):
        exec(compile(block, f"README.md quick-start block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "E=0 out=1 in=2 2 blocks" in out  # the Mixtral experts, per expert, gate/up as two blocks
    assert "head" in out and "axes" in out
