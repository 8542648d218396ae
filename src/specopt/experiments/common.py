"""What every experiment writes: a table (CSV), a plot (PNG) and a short report (Markdown)."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite ``values`` (a diverged run's NaN or inf is left out; NaN
    where fewer than one, respectively two, finite values remain)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else math.nan
    return mean, statistics.stdev(finite) if len(finite) > 1 else math.nan


def t_interval(values) -> tuple[float, float]:
    """The 95 % Student-t interval of the mean of ``values`` (NaN where there are fewer than two or one is not
    finite)."""
    from scipy.stats import t as student_t

    values = [float(v) for v in values]
    if len(values) < 2 or not all(map(math.isfinite, values)):
        return math.nan, math.nan
    half = float(student_t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    mean = statistics.fmean(values)
    return mean - half, mean + half


def markdown_table(rows: list[dict], columns: list[str] | None = None, fmt: str = "{:.4g}") -> str:
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt.format(v) if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, title: str, body: list[str], rows: list[dict], figure: str = "plot.png",
                 columns: list[str] | None = None, glossary: dict[str, str] | None = None) -> Path:
    """``out/report.md`` with the title, the text, the table and the figure; ``out/results.csv``, whose columns
    ``glossary`` explains (each column of the rows that it names, in the rows' order)."""
    write_csv(out / "results.csv", rows)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    explained = [f"- `{k}`: {glossary[k]}" for k in fields if k in (glossary or {})]
    text = [f"# {title}", "", *body, "", markdown_table(rows, columns), "", f"![{title}]({figure})", "",
            "Data: `results.csv` beside this report."]
    if explained:
        text += ["", "Columns of `results.csv`:", "", *explained]
    path = out / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay out, write as PNG and close a matplotlib figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def finish_log_log(fig, ax, xlabel: str, ylabel: str, title: str, path: Path, xticks=None) -> None:
    """Base-2 log axes (ticks at ``xticks`` if given), labels, title, grid, legend; the figure written to ``path``
    (:func:`save_figure`)."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    if xticks is not None:
        ax.set_xticks(xticks, [f"{x:g}" for x in xticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)
