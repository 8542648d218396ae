"""Experiments that reproduce the seed documents' claims (ALGORITHMS.md §7). Each is a function
``run(out: Path, quick: bool, progress: bool) -> Path`` writing a plot (PNG), a table (CSV) and a short
report (Markdown) into ``out`` and returning the report's path."""

from __future__ import annotations

EXPERIMENTS: dict = {}
