"""The sweep's figures (matplotlib, Agg), each PNG with a JSON beside it holding exactly the series drawn.

- data_size_<model>.png: test accuracy vs training fraction per method, mean line, every seed as a dot, ± std
  band; the paper's Table 1 numbers at 100 % when the dataset is one of the paper's.
- model_size.png: test accuracy vs parameter count per method at the largest fraction, with the teacher's
  accuracy (computed from the data) as a horizontal line.
- validation_<model>.png: validation accuracy over steps of every cell (one panel per fraction).
"""
from __future__ import annotations

import io
import json
from typing import Sequence

from etils import epath

from sbs_jax.sweep import grid, marker as marker_lib, paper_results, results as results_lib

COLORS = {"finetune": "tab:blue", "distill": "tab:orange", "step_by_step": "tab:green",
          "step_by_step_llm": "tab:red"}


def _save(fig, path: epath.Path, data: dict) -> epath.Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    path.write_bytes(buf.getvalue())
    marker_lib.write_atomic(path.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    return path


def _title(method: str) -> str:
    return grid.METHOD_TITLES.get(method, method)


def _teacher_line(ax, teacher: float, split: str, shown: Sequence[float]) -> None:
    """The teacher's accuracy as a dashed line; when it lies far above the students' points (a from-scratch
    student at a few percent of the teacher), the axis stays on the students and the line becomes a note at the
    top, so that their differences stay readable."""
    label = f"teacher, computed from data ({split})"
    lo, hi = (min(shown), max(shown)) if shown else (teacher, teacher)
    margin = max(hi - lo, 5.0) * 0.25
    if teacher <= hi + 4 * margin:
        ax.axhline(teacher, color="gray", ls="--", label=label)
        return
    ax.set_ylim(lo - margin, hi + 2 * margin)
    ax.annotate(f"{label}: {teacher:.1f} % (above this axis)", xy=(0.5, 0.97), xycoords="axes fraction",
                ha="center", va="top", fontsize=8, color="gray")


def data_size(root: epath.Path, model: str, rows: Sequence[dict], groups: Sequence[dict]) -> epath.Path:
    import matplotlib.pyplot as plt

    mine = [g for g in groups if g["model"] == model]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = []
    for method in grid.method_order(g["method"] for g in mine):
        gs = sorted((g for g in mine if g["method"] == method), key=lambda g: g["fraction"])
        x = [g["fraction"] * 100 for g in gs]
        mean = [g["test_mean"] for g in gs]
        std = [g["test_std"] or 0.0 for g in gs]
        seeds = [[r["test_accuracy"] for r in sorted(rows, key=lambda r: r["seed"]) if r["model"] == model
                  and r["method"] == method and r["fraction"] == g["fraction"]] for g in gs]
        color = COLORS.get(method)
        ax.plot(x, mean, "-o", color=color, label=_title(method))
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color,
                        alpha=0.15)
        for xi, vals in zip(x, seeds):
            ax.scatter([xi] * len(vals), vals, color=color, s=10, alpha=0.6)
        series.append({"method": method, "fraction_percent": x, "test_mean": mean, "test_std": std,
                       "test_per_seed": seeds})
    dataset = rows[0].get("dataset") if rows else None
    paper = paper_results.table1(dataset or "")
    for method, acc in paper.items():
        ax.scatter([paper_results.TABLE1_FRACTION * 100], [acc], marker="*", s=120, color=COLORS.get(method),
                   edgecolors="black", label=f"paper: {_title(method)} ({paper_results.TABLE1_MODEL})")
    teacher, split = results_lib.teacher_accuracy(rows)
    if teacher is not None:
        shown = [v for s in series for vals in s["test_per_seed"] for v in vals] + list(paper.values())
        _teacher_line(ax, teacher, split, shown)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({x for s in series for x in s["fraction_percent"]}))
    ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlabel("training examples used (% of train)")
    ax.set_ylabel("test accuracy (%), validation-selected step")
    ax.set_title(f"{dataset or ''} {model}: accuracy vs training data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    data = {"figure": "data_size", "model": model, "dataset": dataset, "series": series,
            "paper_table1": {"citation": paper_results.CITATION, "model": paper_results.TABLE1_MODEL,
                             "fraction_percent": paper_results.TABLE1_FRACTION * 100, "test": paper} if paper else None,
            "teacher": {"accuracy": teacher, "split": split} if teacher is not None else None}
    return _save(fig, root / f"data_size_{model}.png", data)


def model_size(root: epath.Path, rows: Sequence[dict], groups: Sequence[dict]) -> epath.Path:
    import matplotlib.pyplot as plt

    fraction = max(g["fraction"] for g in groups)
    at = [g for g in groups if g["fraction"] == fraction]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = []
    for method in grid.method_order(g["method"] for g in at):
        gs = sorted((g for g in at if g["method"] == method), key=lambda g: g["parameters"])
        x, mean = [g["parameters"] for g in gs], [g["test_mean"] for g in gs]
        std = [g["test_std"] or 0.0 for g in gs]
        ax.errorbar(x, mean, yerr=std, fmt="-o", color=COLORS.get(method), capsize=3, label=_title(method))
        series.append({"method": method, "models": [g["model"] for g in gs], "parameters": x, "test_mean": mean,
                       "test_std": std})
    teacher, split = results_lib.teacher_accuracy(rows)
    if teacher is not None:
        ax.axhline(teacher, color="gray", ls="--", label=f"teacher, computed from data ({split})")
    dataset = rows[0].get("dataset") if rows else None
    paper = paper_results.table1(dataset or "")
    for method, acc in paper.items():
        ax.scatter([paper_results.TABLE1_PARAMETERS], [acc], marker="*", s=120, color=COLORS.get(method),
                   edgecolors="black", label=f"paper: {_title(method)} ({paper_results.TABLE1_MODEL})")
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_ylabel("test accuracy (%), validation-selected step")
    ax.set_title(f"{dataset or ''}: accuracy vs model size ({fraction * 100:g} % of train)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    data = {"figure": "model_size", "dataset": dataset, "fraction": fraction, "series": series,
            "teacher": {"accuracy": teacher, "split": split} if teacher is not None else None,
            "paper_table1": {"citation": paper_results.CITATION, "parameters": paper_results.TABLE1_PARAMETERS,
                             "test": paper} if paper else None}
    return _save(fig, root / "model_size.png", data)


def validation_curves(root: epath.Path, model: str, rows: Sequence[dict]) -> epath.Path:
    import matplotlib.pyplot as plt

    mine = sorted((r for r in rows if r["model"] == model), key=lambda r: (r["fraction"], r["method"], r["seed"]))
    fractions = sorted({r["fraction"] for r in mine})
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 3.6), squeeze=False, sharey=True)
    cells = []
    for ax, fraction in zip(axes[0], fractions):
        for r in (r for r in mine if r["fraction"] == fraction):
            steps = [s for s, _ in r["validation_curve"]]
            acc = [a for _, a in r["validation_curve"]]
            ax.plot(steps, acc, "-o", ms=3, color=COLORS.get(r["method"]), alpha=0.8,
                    label=f"{_title(r['method'])} seed {r['seed']}")
            ax.scatter([r["best_step"]], [r["validation_accuracy"]], color=COLORS.get(r["method"]), marker="s",
                       s=25, zorder=3)
            cells.append({"method": r["method"], "fraction": fraction, "seed": r["seed"], "steps": steps,
                          "validation_accuracy": acc, "best_step": r["best_step"], "run_dir": r["run_dir"]})
        ax.set_title(f"{fraction * 100:g} % of train")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"{model}: validation accuracy over steps (squares: selected step)")
    return _save(fig, root / f"validation_{model}.png", {"figure": "validation_curves", "model": model,
                                                          "cells": cells})


def draw_all(root: epath.Path, rows: Sequence[dict], groups: Sequence[dict]) -> list[epath.Path]:
    import matplotlib

    matplotlib.use("Agg")
    models = sorted({r["model"] for r in rows})
    made = [data_size(root, m, rows, groups) for m in models]
    made.append(model_size(root, rows, groups))
    made += [validation_curves(root, m, rows) for m in models]
    return made
