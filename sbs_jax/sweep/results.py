"""A sweep's results, recounted from the cells' prediction files (never from logged metrics).

Per cell: validation accuracy at every evaluated step (predictions/<validation>_step<N>.jsonl), the
validation-best step, test accuracy at that step and at the last step. Per model × method × fraction: mean and
sample std over seeds, and a 95 % t interval. Model selection uses validation only.
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterable, Sequence

import numpy as np
from etils import epath

from sbs_jax import paths
from sbs_jax.data.scoring import metrics
from sbs_jax.data.records.data_dir import DataError
from sbs_jax.sweep import grid, marker as marker_lib

_STEP_FILE = re.compile(r"^(?P<split>.+)_step(?P<step>\d+)\.jsonl$")


def recount_file(path: epath.Path, metric: str) -> float:
    """Accuracy (%) of one predictions file, each row re-scored with the task's metric."""
    correct = total = 0
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            gold, prediction = row["gold"], row["prediction"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{lineno}: expected a JSON object with 'gold' and 'prediction' ({e})") from None
        correct += bool(metrics.label_matches(metric, str(gold), str(prediction)))
        total += 1
    if not total:
        raise DataError(f"{path}: no predictions")
    return 100.0 * correct / total


def validation_curve(cell_dir: epath.Path, split: str, metric: str) -> dict[int, float]:
    curve = {}
    for p in (cell_dir / "predictions").iterdir():
        m = _STEP_FILE.match(p.name)
        if m and m["split"] == split:
            curve[int(m["step"])] = recount_file(p, metric)
    return dict(sorted(curve.items()))


def cell_result(cell_dir: epath.Path, marker: dict) -> dict:
    """The results.jsonl row of one finished cell."""
    metric = marker["metric"]
    curve = validation_curve(cell_dir, marker["validation_split"], metric)
    best_acc = max(curve.values())
    # The trainer tested its validation-best checkpoint; a tie in the recount keeps that step. A different
    # maximum means the prediction files and the run disagree.
    best = marker["best_step"]
    if best not in curve or not math.isclose(curve[best], best_acc):
        raise DataError(f"{cell_dir}: recounted validation accuracy peaks at {best_acc:.2f}% "
                        f"(steps {[s for s, a in curve.items() if a == best_acc]}), but the run tested step "
                        f"{best} ({curve.get(best)})")
    test_split, steps = marker["test_split"], marker["steps"]
    cell = marker["spec"]["cell"]
    return {"model": cell["model"], "method": cell["method"], "fraction": cell["fraction"],
            "seed": cell["seed"], "task": marker["task"], "dataset": marker.get("dataset"),
            "train_examples": marker["train_examples"], "parameters": marker["parameters"],
            "best_step": best, "validation_accuracy": curve[best],
            "test_accuracy": recount_file(marker_lib.prediction_file(cell_dir, test_split, best), metric),
            "test_accuracy_last": recount_file(marker_lib.prediction_file(cell_dir, test_split, steps), metric),
            "steps": steps, "wall_s": marker["wall_s"], "run_dir": str(cell_dir),
            "validation_curve": [[s, a] for s, a in curve.items()],
            "teacher_accuracy": marker.get("teacher_accuracy") or {}}


def collect(sweep_dir) -> tuple[list[dict], list[tuple[str, str]]]:
    """(rows of the finished cells, [(cell key, why not counted)]) over the sweep's planned cells; without a
    plan file, over every `<model>/<method>/f*/seed*` directory."""
    root = paths.absolute(sweep_dir)
    plan = root / "sweep.json"
    if plan.exists():
        keys = json.loads(plan.read_text())["cells"]
    else:
        keys = sorted(str(p.parent.relative_to(root)) for p in root.glob(f"*/*/f*/seed*/{marker_lib.MARKER}"))
        if not keys:
            raise FileNotFoundError(f"{root}: no sweep.json and no finished cells")
    rows, missing = [], []
    for key in keys:
        found, why = marker_lib.read(root / key)
        if found is None:
            missing.append((key, why))
        else:
            rows.append(cell_result(root / key, found))
    return rows, missing


def t_interval(values: Sequence[float], confidence: float = 0.95) -> float | None:
    """Half-width of the t interval of the mean (None for fewer than 2 values)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def aggregate(rows: Iterable[dict]) -> list[dict]:
    """One group per model × method × fraction: n, mean, sample std (ddof 1) and 95 % interval over seeds, of
    the validation-selected test accuracy (and of validation accuracy and train examples)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["fraction"]), []).append(r)
    method_order = grid.method_order(method for _, method, _ in groups)
    out = []
    for (model, method, fraction), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], method_order.index(kv[0][1]) if kv[0][1] in method_order else 99, kv[0][2])):
        test = [r["test_accuracy"] for r in rs]
        out.append({"model": model, "method": method, "fraction": fraction, "n": len(rs),
                    "seeds": sorted(r["seed"] for r in rs), "parameters": rs[0]["parameters"],
                    "train_examples": sorted({r["train_examples"] for r in rs}),
                    "test_mean": float(np.mean(test)), "test_std": float(np.std(test, ddof=1)) if len(rs) > 1 else None,
                    "test_ci95": t_interval(test), "test_values": [r["test_accuracy"] for r in
                                                                   sorted(rs, key=lambda r: r["seed"])],
                    "validation_mean": float(np.mean([r["validation_accuracy"] for r in rs])),
                    "test_last_mean": float(np.mean([r["test_accuracy_last"] for r in rs]))})
    return out


def headline(groups: Sequence[dict]) -> list[dict]:
    """The paper's headline per model: standard finetuning's mean at 100 % data, and for each method the
    smallest fraction whose mean reaches it (None: no fraction does)."""
    out = []
    for model in sorted({g["model"] for g in groups}):
        mine = [g for g in groups if g["model"] == model]
        ref = next((g for g in mine if g["method"] == "finetune" and g["fraction"] == 1.0), None)
        if ref is None:
            continue
        for method in grid.method_order(g["method"] for g in mine):
            reached = sorted(g["fraction"] for g in mine if g["method"] == method
                             and g["test_mean"] >= ref["test_mean"])
            out.append({"model": model, "method": method, "target": ref["test_mean"],
                        "smallest_fraction": reached[0] if reached else None})
    return out


def teacher_accuracy(rows: Sequence[dict]) -> tuple[float | None, str | None]:
    """The teacher's accuracy computed from the data: on the test split when it has teacher outputs, else
    on validation, else train; (accuracy, split)."""
    for row in rows:
        teacher = row["teacher_accuracy"]
        for split in ("test", "validation", "valid", "train"):
            if teacher.get(split) is not None:
                return teacher[split], split
    return None, None


def _pct(x, digits=1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(rows: Sequence[dict], groups: Sequence[dict], missing: Sequence[tuple[str, str]],
             title: str) -> str:
    from sbs_jax.sweep import paper_results

    lines = [f"# {title}", "",
             "Test accuracy (%) at the step with the best validation accuracy (selection on validation only), "
             "recounted from each run's `predictions/*.jsonl`. Mean ± sample std over seeds; 95 % CI: half-width "
             "of the t interval of the mean. `test @ last step`: the last checkpoint, no selection.", "",
             "| model | method | fraction | train ex. | seeds | test acc. mean ± std | 95 % CI | per seed | "
             "valid acc. mean | test @ last step |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        std = "" if g["test_std"] is None else f" ± {g['test_std']:.2f}"
        ci = "–" if g["test_ci95"] is None else f"± {g['test_ci95']:.2f}"
        lines.append(f"| {g['model']} | {grid.METHOD_TITLES.get(g['method'], g['method'])} | "
                     f"{g['fraction'] * 100:g} % | {'/'.join(map(str, g['train_examples']))} | {g['n']} | "
                     f"{g['test_mean']:.2f}{std} | {ci} | {', '.join(f'{v:.1f}' for v in g['test_values'])} | "
                     f"{g['validation_mean']:.2f} | {g['test_last_mean']:.2f} |")
    heads = headline(groups)
    lines += ["", "## Smallest training fraction reaching standard finetuning's 100 % mean", ""]
    if heads:
        for h in heads:
            frac = "not reached" if h["smallest_fraction"] is None else f"{h['smallest_fraction'] * 100:g} %"
            lines.append(f"- {h['model']}, {grid.METHOD_TITLES.get(h['method'], h['method'])}: {frac} "
                         f"(target {h['target']:.2f} %)")
    else:
        lines.append("- needs standard finetuning at 100 % in the grid")
    acc, split = teacher_accuracy(rows)
    if acc is not None:
        lines += ["", f"Teacher accuracy computed from the data ({split} split): {acc:.2f} %."]
    dataset = rows[0].get("dataset") if rows else None
    paper = paper_results.table1(dataset or "")
    if paper:
        lines += ["", f"Paper ({paper_results.CITATION}; {paper_results.TABLE1_MODEL}, 100 % of train): " +
                  ", ".join(f"{grid.METHOD_TITLES[m]} {v:.2f} %" for m, v in paper.items()) + "."]
    if missing:
        lines += ["", f"## Cells not counted ({len(missing)})", ""]
        lines += [f"- `{key}`: {why}" for key, why in missing]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir, *, figures: bool = True) -> dict:
    """Rebuild `results.jsonl` and `results.md` (and the figures) of a sweep from its run dirs."""
    root = paths.absolute(sweep_dir)
    rows, missing = collect(root)
    if not rows:
        raise DataError(f"{root}: no finished cells to report ({len(missing)} not counted)")
    groups = aggregate(rows)
    marker_lib.write_atomic(root / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    marker_lib.write_atomic(root / "results.md", markdown(rows, groups, missing, f"Sweep results: {root.name}"))
    made = []
    if figures:
        from sbs_jax.sweep import figures as figures_lib

        made = figures_lib.draw_all(root, rows, groups)
    return {"rows": rows, "groups": groups, "missing": missing, "figures": made}
