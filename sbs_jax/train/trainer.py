"""A training run: its config, setup (sharded state, ahead-of-time compiled step), and `Trainer.run()` =
write run files -> initial state -> step loop (`loop`) -> finish (checkpoints, test at the best step, summary).

Evaluation is `run_evaluation`'s, checkpoints are `checkpointing`'s. Everything a resumed run needs
(params, optimizer state, step, base RNG, data position) is in the checkpoint, so SIGKILL + restart ends
bit-identical (on CPU) to an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Mapping

import jax
import numpy as np
from etils import epath

from sbs_jax import errors, run_dir
from sbs_jax.data import schema
from sbs_jax.model import T5Config, scan_params
from sbs_jax.model.decoder import DecoderConfig
from sbs_jax.train import batch_cutting, checkpointing, evaluation, inputs, objective as objective_lib, optim
from sbs_jax.train import feeding, loop as loop_lib, progress, run_evaluation
from sbs_jax.train import compile as compile_lib, state as state_lib

log = logging.getLogger(__name__)

# Fields a run may change on top of an imported checkpoint's architecture.
_RUNTIME_FIELDS = run_dir.RUNTIME_FIELDS


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run (gin macros in capitals in the comments).

    model_dir: MODEL_DIR. mixture_or_task_name: MIXTURE_OR_TASK_NAME. task_feature_lengths:
    TASK_FEATURE_LENGTHS ({"inputs", "targets", "rationales"}). train_steps: TRAIN_STEPS. batch_size: BATCH_SIZE
    (global, before accumulation). initial_checkpoint_path: INITIAL_CHECKPOINT_PATH (HF dir, T5X checkpoint or a
    previous run; params only, fresh optimizer).
    eval_every: validation (decode + teacher-forced losses) every N steps and at the end (0 = end only).
    eval_task: task to evaluate (default: the training task, or each task of a training mixture, as T5X does).
    num_input_shards: input shards making up a global batch (default: one per process); fixing it makes the
    batches independent of the number of processes.
    pack: PACK. Train on packed rows (`sbs_jax.data.input_pipeline.packing`): BATCH_SIZE counts rows, each holding several
    (example, stream) segments, so the number of examples per step varies (metric `num_examples`).
    Evaluation stays unpacked. packed_lengths: PACKED_LENGTHS, row lengths {"inputs", "targets"} (default
    `packing.default_packed_lengths`: 2·inputs and targets + rationales for step-by-step); decoder-only
    students: {"decoder": L} (`causal_lm.resolve_packed_length`).
    cut_batches: LENGTH_BUCKETS. Cut each unpacked global batch to the smallest bucket length
    (`min_bucket_length · 2^k`, or with `bucket_step` `min_bucket_length` then multiples of it; capped at
    TASK_FEATURE_LENGTHS) holding its real tokens, separately for the encoder and each stream's decoder
    (decoder-only: each batch key's rows; `batch_cutting.py`); same loss and gradients, one compiled step per
    shape seen. Off by default:
    shapes, compile count and the first step's memory figure stay fixed.
    Incompatible with `pack` (packed rows are full by construction). (Decoding batches are a separate
    matter: `DecodeConfig.length_sorted_batches`.) length_buckets: deprecated old name of `cut_batches`.
    input_workers: worker processes building the numpy back end's batches (`host_pipeline`; 0 = in the main
    process; the batches are the same for every count). max_unparsed_fraction: MAX_UNPARSED_FRACTION. A step-by-step run stops before training when more than
    this fraction of its training examples have no usable teacher rationale (and always when none has one).
    causal_format: CAUSAL_FORMAT, decoder-only students only: `multitask` (the paper's two streams),
    `rationale_first` or `label_first` (one sequence; `sbs_jax.data.input_pipeline.causal_lm`), or
    `multitask_shared_prompt` (the two streams with their prefixes after the input, trained as one tree-shaped
    row per example that computes the shared prompt once; the same losses as two sequences of that prompt).
    """
    model_dir: str
    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    train_steps: int
    batch_size: int
    model: T5Config | DecoderConfig
    optimizer: optim.OptimizerConfig = optim.OptimizerConfig()
    objective: objective_lib.ObjectiveConfig = objective_lib.ObjectiveConfig()
    initial_checkpoint_path: str | None = None
    seed: int = 0
    grad_accum_steps: int = 1
    partitioning: str = "data_parallel"
    mesh_model: int = 1
    num_input_shards: int | None = None
    input_workers: int = 0
    pack: bool = False
    packed_lengths: Mapping[str, int] | None = None
    cut_batches: bool = False
    length_buckets: bool | None = None  # deprecated: the old name of cut_batches
    min_bucket_length: int = 16
    bucket_step: int | None = None
    eval_every: int = 0
    eval_task: str | None = None
    validation_split: str = "validation"
    test_split: str | None = "test"
    eval_batch_size: int = 64
    decode: evaluation.DecodeConfig = evaluation.DecodeConfig()
    rationale_length: int = 0
    save_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    log_every: int = 50
    tensorboard: bool = True
    max_unparsed_fraction: float = 0.2
    causal_format: str = schema.MULTITASK

    def __post_init__(self):
        if self.length_buckets is not None:
            log.warning("TrainConfig.length_buckets is deprecated; it is now TrainConfig.cut_batches "
                        "(gin macro LENGTH_BUCKETS, unchanged)")
            object.__setattr__(self, "cut_batches", bool(self.length_buckets))
        for name in ("train_steps", "batch_size", "grad_accum_steps", "eval_batch_size", "keep_checkpoints",
                     "log_every", "min_bucket_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.packed_lengths is not None and not self.pack:
            raise ValueError("TrainConfig.packed_lengths is set but pack=False; set pack=True (PACK) to pack")
        if self.bucket_step is not None and int(self.bucket_step) < 1:
            raise ValueError(f"TrainConfig.bucket_step: expected a positive integer or None, got {self.bucket_step}")
        if self.pack and self.cut_batches:
            raise ValueError("TrainConfig: pack=True (PACK) and cut_batches=True (LENGTH_BUCKETS) are both set; "
                             "packed rows are full by construction, so bucketing has nothing to cut: set one")
        if not 0.0 <= float(self.max_unparsed_fraction) <= 1.0:
            raise ValueError(f"TrainConfig.max_unparsed_fraction: expected a fraction in [0, 1], got "
                             f"{self.max_unparsed_fraction}")
        if self.causal_format not in schema.CAUSAL_FORMATS:
            raise ValueError(f"TrainConfig.causal_format: expected one of {schema.CAUSAL_FORMATS}, got "
                             f"{self.causal_format!r}")
        if self.causal_format != schema.MULTITASK and not isinstance(self.model, DecoderConfig):
            raise ValueError(f"TrainConfig.causal_format={self.causal_format!r} (CAUSAL_FORMAT) applies to "
                             "decoder-only students; a T5 student always trains the two streams (multitask)")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"TrainConfig: BATCH_SIZE={self.batch_size} is not divisible by "
                             f"grad_accum_steps={self.grad_accum_steps}")


def resolve_model_config(config: TrainConfig, vocab_size: int):
    """(T5Config, imported params or None). An imported checkpoint fixes the architecture; the run keeps its
    own runtime fields (dtype, dropout, scan, remat)."""
    model_config, params = config.model, None
    if config.initial_checkpoint_path:
        from sbs_jax.checkpoints import load_pretrained

        ckpt_config, params = load_pretrained(config.initial_checkpoint_path)
        if type(ckpt_config) is not type(model_config):
            raise errors.UsageError(f"INITIAL_CHECKPOINT_PATH {config.initial_checkpoint_path} holds a "
                                    f"{getattr(ckpt_config, 'model_type', 't5')} model but the gin model file "
                                    f"configures a {type(model_config).__name__}; use a model file of its family")
        runtime = {f: getattr(model_config, f) for f in _RUNTIME_FIELDS if hasattr(model_config, f)}
        differ = [f.name for f in dataclasses.fields(type(ckpt_config)) if f.name not in _RUNTIME_FIELDS
                  and getattr(ckpt_config, f.name) != getattr(model_config, f.name)]
        if differ:
            log.warning("INITIAL_CHECKPOINT_PATH %s fixes the architecture; gin model fields %s differ and are "
                        "taken from the checkpoint", config.initial_checkpoint_path, differ)
        model_config = ckpt_config.replace(**runtime)
        if model_config.scan_layers:
            params = scan_params(params, model_config)
    if vocab_size > model_config.vocab_size:
        raise ValueError(f"the task's vocabulary has {vocab_size} pieces but the model's vocab_size is "
                         f"{model_config.vocab_size}; set model_config.vocab_size >= {vocab_size}")
    return model_config, params


def check_label_source(mode: str, task_name: str) -> None:
    """Finetuning trains on gold labels, distillation on the teacher's: a task of the other kind is an error."""
    import seqio

    from sbs_jax.data.registry import register

    wanted = {"finetune": "gold", "distill": "teacher"}.get(mode)
    provider = seqio.get_mixture_or_task(task_name)
    for task in (provider.tasks if isinstance(provider, seqio.Mixture) else [provider]):
        try:
            source = register.get_task_info(task.name).label_source
        except ValueError:
            continue  # registered outside sbs_jax: nothing recorded to check
        if wanted and source != wanted:
            raise ValueError(f"ObjectiveConfig.mode={mode!r} trains on {wanted} labels, but task {task.name!r} "
                             f"has {source} labels in its label stream (use the `_{'ft' if wanted == 'gold' else 'distill'}` "
                             "variant)")


def check_rationales(config: TrainConfig, task_name: str) -> list[str]:
    """Step-by-step training needs teacher rationales: none at all, or too many unparsed, is an error (the
    run would silently be finetuning); some unparsed gives a note with the count."""
    from sbs_jax.data.registry import register

    if config.objective.mode != "step_by_step":
        return []
    notes = [register.check_rationales(t, "train", config.max_unparsed_fraction) for t in eval_task_names(task_name)]
    return [n for n in notes if n]


# The tasks evaluated for a name: itself, or each task of a mixture (used by tests and the sweep).
eval_task_names = run_evaluation.eval_task_names


class Trainer:
    """Builds everything a run needs; `run()` trains, evaluates and returns a summary."""

    def __init__(self, config: TrainConfig):
        from sbs_jax.data.input_pipeline import pipeline
        from sbs_jax.data.registry import register

        self.config = config
        self.model_dir = epath.Path(config.model_dir)
        self.task = config.mixture_or_task_name
        self.eval_tasks = eval_task_names(config.eval_task or self.task)
        paired = pipeline.is_paired(self.task)
        if config.objective.mode == "step_by_step" and not paired:
            raise ValueError(f"ObjectiveConfig.mode='step_by_step' needs a paired task (`*_sbs*`); "
                             f"{self.task!r} has only the label stream")
        check_label_source(config.objective.mode, self.task)
        self.vocab = register.get_vocabulary(self.task)
        model_config, init_params = resolve_model_config(config, self.vocab.vocab_size)
        self.model_config = model_config
        # Everything that can refuse the run is checked before the first write to MODEL_DIR.
        run_dir.check_compatible(self.model_dir, model_config, task=self.task, seed=config.seed)
        self.rationale_notes = check_rationales(config, self.task)
        self.layout = None
        if isinstance(model_config, DecoderConfig):
            from sbs_jax.data.input_pipeline import causal_lm

            prefixes = (schema.PREDICT_PREFIX, schema.EXPLAIN_PREFIX)
            if config.causal_format == schema.MULTITASK_SHARED_PROMPT:  # the prefixes move after the input
                info = register.get_task_info(self.task)
                prefixes = (info.label_prefix, info.rationale_prefix)
            self.layout = causal_lm.layout_for(config.causal_format, self.vocab, eos_ids=model_config.eos_ids,
                                               bos_id=model_config.prompt_bos_id, prefixes=prefixes)
            if config.pack:  # a wrong PACKED_LENGTHS refuses the run before MODEL_DIR is written
                causal_lm.resolve_packed_length(self.layout.row_lengths(
                    config.task_feature_lengths, schema.RATIONALE in config.objective.streams), config.packed_lengths)
        setup = compile_lib.step_setup(model_config, config.optimizer, config.partitioning, config.mesh_model)
        self.model, self.mesh, self.rules = setup.model, setup.mesh, setup.rules
        self.schedule, self.tx = setup.schedule, setup.tx
        self.state_shardings, self.abstract_state = setup.state_shardings, setup.abstract_state
        self.param_shardings = self.state_shardings.params
        self._init_params = init_params
        self.checkpointer = checkpointing.Checkpointer(self.model_dir / "checkpoints", save_every=config.save_every,
                                                       keep=config.keep_checkpoints,
                                                       async_save=config.async_checkpointing)
        self.writer = progress.MetricWriter(self.model_dir, tensorboard=config.tensorboard)
        self.evaluator = run_evaluation.RunEvaluator(self.model, self.mesh, self.rules, config, self.vocab,
                                                     self.model_dir, self.eval_tasks, layout=self.layout)

    # ------------------------------------------------------------------------------------------ setup
    def write_run_files(self) -> None:
        """model_config.json, run.json and vocab/ in MODEL_DIR (process 0), each written atomically."""
        for note in self.rationale_notes:
            print(note, flush=True)
        if jax.process_index() != 0:
            return
        from sbs_jax.data.registry import selection
        from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib

        rd = run_dir.RunDir(self.model_dir)
        rd.root.mkdir(parents=True, exist_ok=True)
        run_dir.atomic_write_text(rd.model_config_json, json.dumps(self.model_config.to_dict(), indent=2) + "\n")
        run_dir.write_run_info(rd.root, self.run_info())
        vocab_lib.copy_vocabulary(self.vocab, rd.vocab_dir)
        # Which examples each split held, so a run's selection can be checked against the official code's.
        tasks = eval_task_names(self.task)
        selection.write_run_selection_manifest(rd.root, tasks, mixture=None if tasks == [self.task] else self.task)

    def run_info(self) -> dict:
        from sbs_jax.data.registry import register
        from sbs_jax.model.t5 import config as model_config_lib

        fractions, rationales = set(), set()
        for task in eval_task_names(self.task):
            try:
                task_info = register.get_task_info(task)
            except ValueError:
                fractions.add(None)
                rationales.add(None)
                continue
            fractions.add(task_info.train_fraction)
            filters = (task_info.selection or {}).get("rationale_filters")
            rationales.add(json.dumps({"sampling": task_info.rationale_sampling, "filters": filters}, sort_keys=True))
        preset = (model_config_lib.preset_name(self.model_config) if isinstance(self.model_config, T5Config)
                  else None)
        info = run_dir.run_info(task=self.task, task_feature_lengths=self.config.task_feature_lengths,
                                mode=self.config.objective.mode, seed=self.config.seed,
                                train_fraction=fractions.pop() if len(fractions) == 1 else None,
                                model_config=self.model_config, preset=preset,
                                causal_format=None if self.layout is None else self.layout.format)
        # How the rationales were read and filtered (one setting for every task, else None).
        info["rationales"] = json.loads(rationales.pop()) if len(rationales) == 1 and None not in rationales else None
        previous = run_dir.read_run_info(self.model_dir)  # a resumed run keeps its creation time
        if previous and previous.get("created"):
            info["created"] = previous["created"]
        return info

    def initial_state(self):
        """(state, first step): the newest intact checkpoint, else a fresh state."""
        restored = self.checkpointer.restore(self.abstract_state)
        if restored is not None:
            state, meta = restored
            if meta["seed"] != self.config.seed:
                raise ValueError(f"{self.model_dir}: checkpoint step {meta['step']} was trained with seed "
                                 f"{meta['seed']}, this run has seed {self.config.seed}")
            print(f"resumed from {self.checkpointer.directory / str(meta['step'])} "
                  f"(data position {meta['data_position']} batches)", flush=True)
            return state, int(meta["data_position"])
        state = state_lib.create_state(self.model, self.tx, self.mesh, self.rules, self.config.seed,
                                       self.state_shardings, init_params=self._init_params)
        return state, 0

    def compile_step(self, local_batch):
        cfg = self.config
        t0 = time.perf_counter()
        compiled = compile_lib.compile_train_step(
            self.model, self.tx, cfg.objective, self.schedule, cfg.grad_accum_steps, self.mesh, self.rules,
            self.state_shardings, self.abstract_state, compile_lib.abstract_batch(local_batch, self.mesh))
        if jax.process_index() == 0:
            memory = compile_lib.memory_summary(compiled)
            shapes = ""
            if cfg.cut_batches:
                shapes = " for lengths " + ", ".join(f"{k} {v}" for k, v in sorted(
                    batch_cutting.full_lengths(local_batch).items()))
            print(f"train step compiled{shapes} in {time.perf_counter() - t0:.1f}s"
                  + (f"; {memory}" if memory else ""), flush=True)
        return compiled

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, params, split: str, step: int) -> dict[str, float]:
        """`RunEvaluator.evaluate`: every eval task's metrics on `split`, predictions written."""
        return self.evaluator.evaluate(params, split, step)

    def _has_split(self, split: str | None) -> bool:
        return self.evaluator.has_split(split)

    # ------------------------------------------------------------------------------------------ loop
    def train_batches(self, start: int):
        """This process's host batches from batch `start` on (the loop's only input)."""
        cfg = self.config
        return inputs.train_batches(self.task, task_feature_lengths=cfg.task_feature_lengths,
                                    batch_size=cfg.batch_size, seed=cfg.seed, streams=cfg.objective.streams,
                                    start_batch=start, num_input_shards=cfg.num_input_shards,
                                    pack=cfg.pack, packed_lengths=cfg.packed_lengths, workers=cfg.input_workers,
                                    layout=self.layout)

    def run(self) -> dict:
        """Write the run files, restore or create the state, run the step loop, then finish the run."""
        self.write_run_files()
        state, start = self.initial_state()
        result = self.train_loop(state, start)
        return self.finish(result)

    def train_loop(self, state, start: int) -> loop_lib.LoopResult:
        """Steps `start..train_steps` with validation and checkpoints at their cadence (`loop.StepLoop`)."""
        cfg = self.config
        validate = self._has_split(cfg.validation_split)
        if not validate:
            print(f"note: {', '.join(self.eval_tasks)} {'has' if len(self.eval_tasks) == 1 else 'have'} no "
                  f"{cfg.validation_split!r} split; no validation or best-checkpoint selection", flush=True)
        # Packed rows hold a varying number of examples: the bar counts them from the step's metric.
        bar = progress.ProgressBar(cfg.train_steps, start, None if cfg.pack else cfg.batch_size,
                                   log_every=cfg.log_every)
        cutter = batch_cutting.BatchCutter(cfg.min_bucket_length, cfg.bucket_step) if cfg.cut_batches else None
        sync_each_step = feeding.step_sync_needed()
        # Inline feeding where steps must not overlap collectives: the CPU multi-process case, and the cutter,
        # which agrees lengths across processes (a collective), with several processes.
        inline = sync_each_step or (cutter is not None and jax.process_count() > 1)
        feed = feeding.DevicePrefetcher(self.train_batches(start), lambda b: inputs.to_global(b, self.mesh),
                                        prepare=cutter, depth=0 if inline else 2)
        steps = loop_lib.StepLoop(
            self.compile_step,
            cadence=loop_lib.Cadence(end=cfg.train_steps, log_every=cfg.log_every, eval_every=cfg.eval_every,
                                     save_every=self.checkpointer.save_every, validate=validate),
            writer=self.writer, bar=bar, validate=self._validate, save=self._save,
            varying_shapes=cutter is not None, count_examples=cfg.pack, sync_each_step=sync_each_step)
        try:
            result = steps.run(state, start, feed)
        finally:
            feed.close()
        bar.close()
        if cutter is not None and cutter.padded and jax.process_index() == 0:
            print(f"length bucketing: {result.num_compiled} train step shape(s) compiled; batches kept "
                  f"{100.0 * cutter.kept / cutter.padded:.1f} % of the padded token positions", flush=True)
        return result

    def _validate(self, state, step: int) -> dict:
        metrics = self.evaluate(state.params, self.config.validation_split, step)
        self.writer.write(step, metrics, self.config.validation_split)
        return metrics

    def _save(self, step: int, state, metrics: dict | None) -> None:
        self.checkpointer.save(step, state, data_position=step, seed=self.config.seed, metrics=metrics)

    def finish(self, result: loop_lib.LoopResult) -> dict:
        """Waits for the checkpoints, tests the best step and writes `summary.json`."""
        self.checkpointer.wait()
        summary = {"model_dir": str(self.model_dir), "final_step": int(self.config.train_steps),
                   "validation": result.last_validation, **result.timing}
        best = self.checkpointer.best_step()
        if best is not None:
            summary["best_step"] = int(best)
        if self._has_split(self.config.test_split):
            summary["test"] = self.evaluate_test(result.state, best)
        self.checkpointer.close()
        self.writer.close()
        if jax.process_index() == 0:
            run_dir.atomic_write_text(run_dir.RunDir(self.model_dir).summary_json, json.dumps(summary, indent=2) + "\n")
        return summary

    def evaluate_test(self, state, best: int | None) -> dict:
        """The test split with the best checkpoint by validation accuracy (else the final params)."""
        step = int(np.asarray(state.step.addressable_data(0)))
        params = state.params
        if best is not None and best != step:
            restored, _ = self.checkpointer.restore(self.abstract_state, step=best)
            params, step = restored.params, best
        metrics = self.evaluate(params, self.config.test_split, step)
        self.writer.write(step, metrics, self.config.test_split)
        return {**metrics, "step": step}


_StepTimer = loop_lib.StepTimer  # the old name


def train(config: TrainConfig) -> dict:
    return Trainer(config).run()
