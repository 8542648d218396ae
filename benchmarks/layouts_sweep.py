"""The loop both layout sweeps run (``hf_layouts_sweep.py``, ``timm_layouts_sweep.py``): build each model, classify
its tensors with :func:`specopt.layouts.classify`, print every refusal, crash and warning, count the outcomes."""

from __future__ import annotations

import importlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable

from specopt.layouts import classify


def outcome(model) -> tuple[str, str]:
    """``("classified" | "warned" | "refused" | "crashed", what to print)`` of classifying ``model``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            classify(model)
        except ValueError as err:  # the refusal that names the tensor and its declaration
            return "refused", str(err).split(" has a layout")[0]
        except Exception as err:  # noqa: BLE001 — anything but that ValueError is a bug
            return "crashed", f"{type(err).__name__}: {str(err)[:160]}"
    guesses = [str(w.message) for w in caught if "read as F.linear" in str(w.message)]
    return ("warned", guesses[0].split(": ", 1)[1].split(". If")[0]) if guesses else ("classified", "")


def need(package: str, how: str):
    """``import package``, or end the script with one line saying why it failed and how to run it."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise SystemExit(f"{package} is not importable here ({e}); {how}") from None


def sweep(candidates: Iterable[tuple[str, Callable]]) -> Counter:
    """Counts of each outcome over ``candidates`` (``(name, build)``; ``build()`` returns the model, None where there
    is none to build, or raises where it does not build: counted as ``"unbuilt"``, not a specopt result)."""
    counts = Counter()
    for name, build in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build()
        except Exception:  # noqa: BLE001 — a model that does not build at the sweep's sizes
            counts["unbuilt"] += 1
            continue
        if model is None:
            continue
        result, detail = outcome(model)
        counts[result] += 1
        if result != "classified":
            print(f"{result:9}{name}: {detail}")
    return counts


def summary(counts: Counter) -> str:
    return (f"{counts['classified'] + counts['warned']} classified ({counts['warned']} with a warning), "
            f"{counts['refused']} refused, {counts['crashed']} crashed")
