"""Evaluating a training run's params on a split: decode-and-score accuracy plus teacher-forced per-stream
losses of every eval task, predictions written under `MODEL_DIR/predictions/`.

The trainer validates and tests through one `RunEvaluator`, which keeps each split's examples and
teacher-forced batches after their first use (a run evaluates the same validation split many times).
"""
from __future__ import annotations

import numpy as np

from sbs_jax import partitioning
from sbs_jax.train import evaluation, inputs


def eval_task_names(name: str) -> list[str]:
    """The tasks evaluated for `name`: itself, or each task of a mixture."""
    import seqio

    provider = seqio.get_mixture_or_task(name)
    return [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [name]


def task_has_split(task: str, split: str) -> bool:
    import seqio

    return split in seqio.get_mixture_or_task(task).splits


class RunEvaluator:
    """`config` is the run's `TrainConfig` (lengths, eval batch size, objective streams, decoding). With a
    causal `layout` (decoder-only students) predictions are generations whose label is parsed per format
    (`causal_evaluation`; metrics add `parse_failures`), teacher-forced batches are causal rows."""

    def __init__(self, model, mesh, rules, config, vocab, model_dir, eval_tasks: list[str], layout=None):
        self.mesh, self.config, self.vocab, self.model_dir, self.eval_tasks = mesh, config, vocab, model_dir, eval_tasks
        self.model, self.layout = model, layout
        self.decoder = evaluation.Decoder(model, mesh, rules, config.decode) if layout is None else None
        self.eval_step = evaluation.eval_step_with_shardings(model, config.objective, mesh, rules)
        self._cache: dict = {}

    def has_split(self, split: str | None) -> bool:
        return bool(split) and any(task_has_split(t, split) for t in self.eval_tasks)

    def evaluate(self, params, split: str, step: int) -> dict[str, float]:
        """Decode-and-score accuracy plus teacher-forced per-stream losses of every eval task with `split`.

        One task: its metrics, predictions in `predictions/<split>_step<step>.jsonl`. Several (a training
        mixture): `<task>/<metric>` for each, predictions in `predictions/<task>/...`, and `accuracy` = the
        mean of the tasks' accuracies (T5X reports per task; the best checkpoint needs one number).
        """
        tasks = [t for t in self.eval_tasks if task_has_split(t, split)]
        per_task = {t: self._evaluate_task(t, params, split, step, len(tasks) > 1) for t in tasks}
        if len(tasks) == 1:
            return per_task[tasks[0]]
        metrics = {f"{t}/{k}": v for t, m in per_task.items() for k, v in m.items()}
        metrics["accuracy"] = float(np.mean([m["accuracy"] for m in per_task.values()]))
        metrics["num_examples"] = float(sum(m["num_examples"] for m in per_task.values()))
        return metrics

    def _predict(self, task: str, params, split: str) -> tuple[dict[str, float], list[dict]]:
        label_length = self.config.decode.label_length(self.config.task_feature_lengths)
        if self.layout is not None:
            from sbs_jax.train import causal_evaluation

            lengths = self.config.task_feature_lengths
            new_tokens = label_length
            if self.layout.generates_rationale:
                new_tokens += int(lengths["rationales"]) + len(self.layout.marker)
            return causal_evaluation.predict_split(self.model, params, self.vocab, self._examples(task, split),
                                                   self.layout, metric=evaluation.metric_name(task),
                                                   batch_size=self._batch_size(), max_new_tokens=new_tokens)
        rows = evaluation.predict_split(self.decoder, params, self.vocab, self._examples(task, split),
                                        batch_size=self._batch_size(),
                                        target_length=label_length,
                                        rationale_length=self.config.rationale_length)
        return evaluation.score_predictions(task, rows), rows

    def _evaluate_task(self, task: str, params, split: str, step: int, nested: bool) -> dict[str, float]:
        metrics, rows = self._predict(task, params, split)
        directory = self.model_dir / "predictions" / task if nested else self.model_dir / "predictions"
        evaluation.write_predictions(directory / f"{split}_step{step}.jsonl", rows)
        forced = evaluation.teacher_forced_metrics(
            self.eval_step, params, self._forced_batches(task, split, len(rows)), self.config.objective,
            lambda b: inputs.replicate_to_global(b, self.mesh))
        metrics.update({k: v for k, v in forced.items()})
        return metrics

    def _examples(self, task: str, split: str):
        from sbs_jax.data.input_pipeline import pipeline

        key = ("decode", task, split)
        if key not in self._cache:
            self._cache[key] = pipeline.get_eval_examples(
                task, split=split, task_feature_lengths=self.config.task_feature_lengths)
        return self._cache[key]

    def _batch_size(self) -> int:
        return partitioning.round_up_to_data(self.config.eval_batch_size, self.mesh)

    def _forced_batches(self, task: str, split: str, num_examples: int):
        from sbs_jax.data.input_pipeline import pipeline

        key = ("forced", task, split)
        if key not in self._cache:
            data = self.mesh.shape[partitioning.DATA]
            bs = min(self._batch_size(), num_examples // data * data)
            batches = []
            if bs > 0 and self.layout is not None:
                from sbs_jax.data.input_pipeline import causal_batches

                batches = list(causal_batches.train_batches(
                    task, self.layout, task_feature_lengths=self.config.task_feature_lengths, batch_size=bs,
                    paired=self.config.objective.mode == "step_by_step", split=split, shuffle=False, num_epochs=1))
            elif bs > 0:
                ds = pipeline.get_train_dataset(task, task_feature_lengths=self.config.task_feature_lengths,
                                                batch_size=bs, split=split, shuffle=False, num_epochs=1)
                streams = self.config.objective.streams
                batches = [{s: b[s] for s in streams} for b in ds.as_numpy_iterator()]
            self._cache[key] = batches
        return self._cache[key]
