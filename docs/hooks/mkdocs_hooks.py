"""mkdocs hooks: the repository's result pages in the site, and links to them that work everywhere.

EXPERIMENTS.md, BENCHMARKS.md, the experiments' reports, plots and tables (``experiments/``) and the benchmark
tables (``benchmarks/results/``) live at the repository root, outside ``docs/``; they are added to the site at
their repository paths. Pages under ``docs/`` link to them by repository-relative paths
(``../EXPERIMENTS.md`` from ``docs/index.md``), which work on GitHub and in an editor; here those links are
rewritten to the files' places in the site. A folder of runs without a report of its own
(``experiments/gram-bf16/``, linked from EXPERIMENTS.md) gets a generated index page listing its runs' reports.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("EXPERIMENTS.md", "BENCHMARKS.md")
FOLDERS = {"experiments": (".md", ".png", ".csv"), "benchmarks/results": (".csv",)}
LINK = re.compile(r"\]\((?!https?:|mailto:|#|/)([^)\s#]+)(#[^)\s]*)?\)")


def mounted() -> list[str]:
    """Repository paths of the files added to the site."""
    paths = [p for p in PAGES if (ROOT / p).is_file()]
    for folder, suffixes in FOLDERS.items():
        paths += sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                        if p.is_file() and p.suffix in suffixes)
    return paths


def run_folders(paths: list[str]) -> dict[str, list[str]]:
    """``{folder: [its runs' report paths]}`` for the folders whose reports are all one level down."""
    reports = [p for p in paths if p.endswith("/report.md")]
    folders: dict[str, list[str]] = {}
    for report in reports:
        run = posixpath.dirname(report)
        parent = posixpath.dirname(run)
        if parent and f"{parent}/report.md" not in reports:
            folders.setdefault(parent, []).append(report)
    return folders


def on_files(files, config):
    paths = mounted()
    for path in paths:
        if files.get_file_from_path(path) is None:
            files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    for folder, reports in run_folders(paths).items():
        lines = [f"# {folder}", "", "The runs of this folder, each with its report:", ""]
        lines += [f"- [{posixpath.basename(posixpath.dirname(r))}]({posixpath.relpath(r, folder)})" for r in reports]
        files.append(File.generated(config, f"{folder}/index.md", content="\n".join(lines) + "\n"))
    return files


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    if page.file.abs_src_path is None:  # a generated index
        return markdown
    source = Path(page.file.abs_src_path).resolve()
    if docs not in source.parents:  # a repository page: its links to folders go to their index pages
        here = posixpath.dirname(page.file.src_uri)

        def folder(match: re.Match) -> str:
            target = match.group(1)
            index = posixpath.normpath(posixpath.join(here, target, "index.md"))
            if target.endswith("/") and files.get_file_from_path(index) is not None:
                return f"]({target}index.md{match.group(2) or ''})"
            return match.group(0)

        return LINK.sub(folder, markdown)
    here = posixpath.dirname(page.file.src_uri)
    prefix = docs.relative_to(ROOT).as_posix()

    def fix(match: re.Match) -> str:
        target, anchor = match.group(1), match.group(2) or ""
        repo_path = posixpath.normpath(posixpath.join(prefix, here, target))
        if repo_path.startswith(prefix + "/") or files.get_file_from_path(repo_path) is None:
            return match.group(0)
        return f"]({posixpath.relpath(repo_path, here or '.')}{anchor})"

    return LINK.sub(fix, markdown)
