"""The documentation site (mkdocs.yml, docs/): every ```python block of its pages runs as written, its links point
to files the repository ships, and `mkdocs build --strict` passes where the docs tools are installed.

Blocks of one page run in order in one namespace, as a reader pastes them. A block preceded by ``<!-- no-test -->``
is skipped; only blocks that need torch.distributed or a GPU may say so. Blocks that import transformers are
skipped where it is not installed (the page then reports a skip, after its other blocks have run).
docs/integrations.md has its own test (tests/test_integrations.py).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
TESTED_ELSEWHERE = {DOCS / "integrations.md"}
PAGES = sorted(p for p in DOCS.rglob("*.md") if p not in TESTED_ELSEWHERE and "reference" not in p.parts)
GUIDES = ["migrating-from-torch-muon", "norms-and-radii", "constrained-training", "distributed", "reproducing"]

BLOCK = re.compile(r"(<!-- no-test -->\n)?```python\n(.*?)```", re.S)
NEEDS_TRANSFORMERS = re.compile(r"^\s*(import transformers|from transformers\b)", re.M)
DISTRIBUTED_OR_GPU = re.compile(r"torch\.distributed|DistributedDataParallel|fully_shard|torchrun|\.cuda\(|\"cuda\"")
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s#]+)(?:#[^)\s]*)?\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def blocks(page: Path) -> list[tuple[bool, str]]:
    """``(runs, code)`` for every python block of ``page``, in order."""
    return [(not marker, code) for marker, code in BLOCK.findall(page.read_text())]


def test_the_site_has_its_pages():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {f"guides/{g}.md" for g in GUIDES} <= names
    assert {"index.md", "optimizers/index.md", "optimizers/muon.md", "optimizers/prox-spectral.md"} <= names
    for guide in GUIDES:
        assert any(runs for runs, _ in blocks(DOCS / "guides" / f"{guide}.md")), f"{guide}: no runnable block"


def test_only_distributed_or_gpu_blocks_are_marked_no_test():
    for page in PAGES:
        for runs, code in blocks(page):
            if not runs:
                assert DISTRIBUTED_OR_GPU.search(code), f"{page.name}: a no-test block that needs neither " \
                                                        f"torch.distributed nor a GPU:\n{code[:200]}"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_runs_as_written(page, tmp_path, monkeypatch, capsys):
    code_blocks = blocks(page)
    if not code_blocks:
        pytest.skip("no python blocks")
    monkeypatch.chdir(tmp_path)  # anything a block writes stays out of the checkout
    have_transformers = _importable("transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__docs__"}
    skipped = 0
    try:
        for i, (runs, code) in enumerate(code_blocks):
            if not runs:
                continue
            if NEEDS_TRANSFORMERS.search(code) and not have_transformers:
                skipped += 1
                continue
            exec(compile(code, f"{page.relative_to(ROOT)} python block {i}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    if skipped:
        pytest.skip(f"{skipped} block(s) need transformers, which is not installed (the others ran)")


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_links_point_to_files_the_repository_ships(page):
    """Relative links resolve in the checkout (the site maps links above docs/ to its copies of those files)."""
    for target in LINK.findall(CODE.sub("", page.read_text())):
        path = (page.parent / target).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which the repository does not ship"


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (site / "reference" / "optimizers" / "index.html").read_text()
    for name in ("specopt.Muon", "specopt.Scion", "specopt.ProxSpectral", "specopt.GeometryOptimizer"):
        assert f'id="{name}"' in reference, f"the API reference has no entry for {name}"
    assert (site / "EXPERIMENTS" / "index.html").exists() and (site / "experiments" / "msign" / "plot.png").exists()


def test_the_norms_guide_lists_every_catalogue_name():
    """The guide's list of the names ``get_norm`` takes had fallen behind the catalogue (``flattened`` missing)."""
    from specopt.norms import CATALOGUE

    text = (DOCS / "guides" / "norms-and-radii.md").read_text()
    listed = re.search(r'`specopt\.get_norm\("spectral"\)` builds a catalogue norm by name \((.*?)\);', text, re.S)
    assert listed, "the sentence listing the catalogue's names moved: update this test"
    assert sorted(re.findall(r"`(\w+)`", listed.group(1))) == sorted(CATALOGUE)
