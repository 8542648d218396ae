"""Every Python block of the README runs as written, in order, in one namespace (as a reader pastes them), but
those marked ``<!-- no-test: why -->`` (they need torch.distributed)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).parents[1] / "README.md"


def blocks() -> list[tuple[int, str]]:
    """``(line, code)`` of every python block not marked no-test."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"(<!-- no-test[^>]*-->\n)?```python\n(.*?)```", text, flags=re.S):
        if not m.group(1):
            out.append((text[:m.start()].count("\n") + 1, m.group(2)))
    return out


def test_the_readme_has_its_examples():
    assert len(blocks()) >= 4


def test_every_readme_block_runs_as_written(capsys):
    pytest.importorskip("transformers")
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__readme__"}
    for line, code in blocks():
        exec(compile(code, f"README.md block at line {line}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "E=0 out=1 in=2 2 blocks" in out  # the Mixtral experts, per expert, gate/up as two blocks
    assert "head" in out and "axes" in out
