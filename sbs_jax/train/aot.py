"""Ahead-of-time compilation of a training run for any devices, a TPU slice's compile-only ones included.

`plan_run` checks that the run's batch and parameters divide over the slice's mesh and hosts; `compile_run`
compiles, from abstract shapes only, the programs the run would: the train step for every batch shape it
feeds (each length-bucket shape with `cut_batches`, packed rows with `pack`), the teacher-forced eval step and
the label decoder. The step is built by `compile.step_setup` + `compile.compile_train_step`, as `Trainer`
builds it, so what is compiled here is what the run runs.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from sbs_jax import partitioning
from sbs_jax.data import schema
from sbs_jax.tpu import analysis
from sbs_jax.train import batch_cutting, compile as compile_lib, evaluation

Shapes = dict  # {stream: {feature: (rows, length)}}


class PlanError(ValueError):
    """The run does not divide over the slice (batch over the data axis or hosts, a parameter over an axis)."""


@dataclasses.dataclass
class Program:
    """One compiled program: its name, input shapes, the compiled executable (None when the compiler refused
    it, `error` says why) and the wall time of `lower(...).compile()`."""
    name: str
    shapes: Any
    compiled: Any
    seconds: float
    error: str | None = None


@dataclasses.dataclass
class RunPlan:
    """A run laid out on devices: the step's ingredients, the batch shapes it feeds and its host layout."""
    config: Any                        # TrainConfig
    setup: compile_lib.StepSetup
    train_shapes: list[Shapes]         # largest first
    all_train_shapes: int              # how many shapes the run may compile (bucket combinations)
    num_hosts: int
    num_input_shards: int
    layout: Any = None                 # a decoder-only run's causal_lm.CausalLayout (None: T5)

    @property
    def rows_per_host(self) -> int:
        return self.config.batch_size // self.num_hosts


def _stream_lengths(config) -> dict[str, tuple[int, int]]:
    """{stream: (encoder length, decoder length)} of the unpacked batches, from TASK_FEATURE_LENGTHS."""
    lengths = config.task_feature_lengths
    decoder = {schema.LABEL: "targets", schema.RATIONALE: "rationales"}
    out = {}
    for stream in config.objective.streams:
        if decoder[stream] not in lengths or "inputs" not in lengths:
            raise PlanError(f"TASK_FEATURE_LENGTHS lacks {decoder[stream]!r} or 'inputs' (stream {stream!r}); "
                            f"got {dict(lengths)}")
        out[stream] = (int(lengths["inputs"]), int(lengths[decoder[stream]]))
    return out


def _unpacked(rows: int, lengths: Mapping[str, tuple[int, int]]) -> Shapes:
    return {s: {k: (rows, enc if k == schema.ENCODER_INPUT_TOKENS else dec) for k in schema.STREAM_KEYS}
            for s, (enc, dec) in lengths.items()}


def causal_layout(config):
    """The `causal_lm.CausalLayout` that sizes a decoder-only run's rows. Their lengths need the model's BOS and,
    for the one-sequence formats of step-by-step runs, the length of the tokenized format marker: that needs
    the task's vocabulary, so the task must be registered (a `PlanError` says so otherwise)."""
    from sbs_jax.data.input_pipeline import causal_lm

    model = config.model
    paired = schema.RATIONALE in tuple(config.objective.streams)
    if not paired or config.causal_format == schema.MULTITASK:  # no marker in these rows
        return causal_lm.CausalLayout(schema.MULTITASK, eos_id=model.eos_ids[0], bos_id=model.prompt_bos_id)
    import seqio

    try:
        vocab = seqio.get_mixture_or_task(config.mixture_or_task_name).output_features["inputs"].vocabulary
    except ValueError:
        what = (f"the tokenized marker {schema.FORMAT_MARKERS[config.causal_format]!r}"
                if config.causal_format in schema.FORMAT_MARKERS else "the tokenized stream prefixes")
        raise PlanError(f"CAUSAL_FORMAT={config.causal_format!r} rows hold {what}, whose length needs the task's "
                        f"vocabulary; task {config.mixture_or_task_name!r} is not registered "
                        "(`sbs compile --register_tasks`)") from None
    prefixes = (schema.PREDICT_PREFIX, schema.EXPLAIN_PREFIX)
    if config.causal_format == schema.MULTITASK_SHARED_PROMPT:  # as the Trainer: the task's own prefixes
        from sbs_jax.data.registry import register

        info = register.get_task_info(config.mixture_or_task_name)
        prefixes = (info.label_prefix, info.rationale_prefix)
    return causal_lm.layout_for(config.causal_format, vocab, eos_ids=model.eos_ids, bos_id=model.prompt_bos_id,
                                prefixes=prefixes)


def _causal_train_shapes(config, layout) -> tuple[list[Shapes], int]:
    """`train_shapes` of a decoder-only run: causal rows per batch key (`CausalLayout.row_lengths`), packed rows
    of `causal_lm.resolve_packed_length`, or with `cut_batches` every combination of the keys' bucket lengths."""
    from sbs_jax.data.input_pipeline import causal_lm

    rows = int(config.batch_size)
    paired = schema.RATIONALE in tuple(config.objective.streams)
    layout = layout or causal_layout(config)
    full = layout.row_lengths(config.task_feature_lengths, paired)
    if config.pack:
        try:
            length = causal_lm.resolve_packed_length(full, config.packed_lengths)
        except ValueError as e:
            raise PlanError(str(e)) from None
        keys = schema.CAUSAL_KEYS + (schema.DECODER_SEGMENT_IDS,)
        return [{schema.PACKED: {k: (rows, length) for k in keys}}], 1

    def shapes(lengths):
        return {g: {k: (rows, n) for k in layout.row_keys(paired)} for g, n in lengths.items()}
    if not config.cut_batches:
        return [shapes(full)], 1
    ladders = [batch_cutting.train_bucket_lengths(n, config.min_bucket_length, config.bucket_step)
               for n in full.values()]
    combos = sorted(itertools.product(*ladders), reverse=True)
    return [shapes(dict(zip(full, combo))) for combo in combos], len(combos)


def train_shapes(config, layout=None) -> tuple[list[Shapes], int]:
    """(the global batch shapes to compile, largest first; how many the run may meet). Unpacked: the padded
    lengths, and with `cut_batches` every combination of the encoder's and each stream decoder's bucket
    lengths. Packed: rows of the packed lengths (`packing.resolve_packed_lengths`). Decoder-only runs: their
    causal rows (`_causal_train_shapes`; `layout` as the trainer builds it, default `causal_layout`)."""
    from sbs_jax.model.decoder import DecoderConfig

    if isinstance(config.model, DecoderConfig):
        return _causal_train_shapes(config, layout)
    rows = int(config.batch_size)
    streams = tuple(config.objective.streams)
    if config.pack:
        from sbs_jax.data.input_pipeline import packing, pipeline

        task_lengths = pipeline.sequence_lengths(config.task_feature_lengths, schema.RATIONALE in streams)
        packed = packing.resolve_packed_lengths(task_lengths, config.packed_lengths, streams)
        keys = (schema.ENCODER_KEYS + (schema.DECODER_INPUT_TOKENS, schema.DECODER_TARGET_TOKENS,
                                       schema.DECODER_SEGMENT_IDS, schema.DECODER_POSITIONS,
                                       schema.DECODER_LOSS_WEIGHTS, schema.DECODER_STREAM_IDS))
        return [{schema.PACKED: {k: (rows, packed["inputs"] if k in schema.ENCODER_KEYS else packed["targets"])
                                 for k in keys}}], 1
    full = _stream_lengths(config)
    if not config.cut_batches:
        return [_unpacked(rows, full)], 1
    encoder = next(iter(full.values()))[0]
    ladders = [batch_cutting.train_bucket_lengths(encoder, config.min_bucket_length, config.bucket_step)]
    ladders += [batch_cutting.train_bucket_lengths(dec, config.min_bucket_length, config.bucket_step)
                for _, dec in full.values()]
    combos = sorted(itertools.product(*ladders), reverse=True)
    shapes = [_unpacked(rows, {s: (combo[0], combo[1 + i]) for i, s in enumerate(full)}) for combo in combos]
    return shapes, len(shapes)


def abstract_batch(shapes: Shapes, mesh) -> dict:
    """The global batch as int32 ShapeDtypeStructs sharded over `data` (what `inputs.to_global` makes)."""
    sharding = partitioning.data_sharding(mesh)
    return {s: {k: jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding) for k, shape in features.items()}
            for s, features in shapes.items()}


def _check_divisible(config, setup: compile_lib.StepSetup, num_hosts: int, num_shards: int) -> None:
    mesh = setup.mesh
    data = mesh.shape[partitioning.DATA]
    batch, accum = int(config.batch_size), int(config.grad_accum_steps)
    if batch % data:
        raise PlanError(f"BATCH_SIZE={batch} is not divisible by the data axis ({data} = {mesh.size} chips / "
                        f"MESH_MODEL {mesh.shape[partitioning.MODEL]}); use a multiple of {data}")
    if (batch // accum) % data:
        raise PlanError(f"the microbatch BATCH_SIZE/GRAD_ACCUM_STEPS = {batch // accum} is not divisible by the "
                        f"data axis ({data})")
    if num_shards % num_hosts:
        raise PlanError(f"num_input_shards={num_shards} is not a multiple of the slice's {num_hosts} hosts "
                        "(each host reads whole input shards)")
    if batch % num_shards:
        raise PlanError(f"BATCH_SIZE={batch} is not divisible by num_input_shards={num_shards}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(setup.abstract_state.params):
        spec = leaf.sharding.spec
        if not partitioning._divisible(leaf.shape, spec, mesh):
            axes = ", ".join(f"{n} {d} over {a}" for n, d, a in zip(range(len(leaf.shape)), leaf.shape, spec) if a)
            raise PlanError(f"parameter {jax.tree_util.keystr(path, simple=True, separator='/')} {leaf.shape} "
                            f"does not divide over the mesh {dict(mesh.shape)} with PARTITIONING="
                            f"{config.partitioning!r} (dims {axes}); change MESH_MODEL or the preset")


def plan_run(config, model_config, devices: Sequence[jax.Device] | None = None, num_hosts: int = 1,
             layout=None) -> RunPlan:
    """Lay the run out on `devices` (default: this host's) over `num_hosts` hosts, checking that it divides.
    A decoder-only run's rows follow `layout` (default: `causal_layout(config)`)."""
    n = len(jax.devices() if devices is None else devices)
    if config.mesh_model < 1 or n % config.mesh_model:
        raise PlanError(f"MESH_MODEL={config.mesh_model} does not divide the slice's {n} chips")
    try:
        setup = compile_lib.step_setup(model_config, config.optimizer, config.partitioning, config.mesh_model,
                                       devices=devices)
    except ValueError as e:  # e.g. jax.make_mesh refuses multislice device sets: so would the run itself
        raise PlanError(f"the run's (data, model) mesh cannot be built on these devices: {e}") from None
    shards = num_hosts if config.num_input_shards is None else int(config.num_input_shards)
    _check_divisible(config, setup, num_hosts, shards)
    from sbs_jax.model.decoder import DecoderConfig

    if isinstance(model_config, DecoderConfig) and layout is None:
        layout = causal_layout(config)
    shapes, count = train_shapes(config, layout)
    return RunPlan(config=config, setup=setup, train_shapes=shapes, all_train_shapes=count, num_hosts=num_hosts,
                   num_input_shards=shards, layout=layout)


def _timed(name: str, shapes, lower: Callable[[], Any], is_refusal: Callable[[BaseException], bool]) -> Program:
    t0 = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as e:  # noqa: BLE001 - a refusal (out of memory) is a result; anything else propagates
        if not is_refusal(e):
            raise
        return Program(name, shapes, None, time.perf_counter() - t0, error=str(e).strip().splitlines()[0])
    return Program(name, shapes, compiled, time.perf_counter() - t0)


def compile_run(plan: RunPlan, *, all_buckets: bool = False, eval_programs: bool = True,
                is_refusal: Callable[[BaseException], bool] = lambda e: False) -> list[Program]:
    """The run's programs, compiled: the train step for the largest batch shape (every shape with
    `all_buckets`), then the eval step and the label decoder at full length. A compile error for which
    `is_refusal` is true (the TPU compiler's out-of-HBM) is recorded in the program; others raise."""
    cfg, s = plan.config, plan.setup
    programs = []
    for shapes in plan.train_shapes if all_buckets else plan.train_shapes[:1]:
        batch = abstract_batch(shapes, s.mesh)

        def lower(batch=batch):
            return compile_lib.lower_train_step(s.model, s.tx, cfg.objective, s.schedule, cfg.grad_accum_steps,
                                                s.mesh, s.rules, s.state_shardings, s.abstract_state, batch)
        programs.append(_timed("train_step", shapes, lower, is_refusal))
    if not eval_programs:
        return programs
    params = s.abstract_state.params
    eval_rows = partitioning.round_up_to_data(cfg.eval_batch_size, s.mesh)
    if plan.layout is not None:
        return programs + _causal_eval_programs(plan, eval_rows, is_refusal)
    eval_shapes = _unpacked(eval_rows, _stream_lengths(cfg))
    eval_batch = abstract_batch(eval_shapes, s.mesh)
    eval_fn = evaluation.eval_step_jit(s.model, cfg.objective, s.mesh)

    def lower_eval():
        import flax.linen as nn

        with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
            return eval_fn.lower(params, eval_batch)
    programs.append(_timed("eval_step", eval_shapes, lower_eval, is_refusal))
    decoder = evaluation.Decoder(s.model, s.mesh, s.rules, cfg.decode)
    length = cfg.decode.label_length(cfg.task_feature_lengths)
    inputs_len = int(cfg.task_feature_lengths["inputs"])
    tokens = jax.ShapeDtypeStruct((eval_rows, inputs_len), np.int32, sharding=partitioning.data_sharding(s.mesh))
    programs.append(_timed("decode", {"encoder_input_tokens": (eval_rows, inputs_len), "decode_length": length},
                           lambda: decoder.lower(params, tokens, length), is_refusal))
    return programs


def _causal_eval_programs(plan: RunPlan, eval_rows: int, is_refusal) -> list[Program]:
    """A decoder-only run's eval programs: the teacher-forced eval step on unpacked causal rows and greedy
    generation (`causal_evaluation.generate`) from the longest label prompt, [BOS] + inputs without EOS, for
    the format's number of new tokens."""
    import dataclasses

    import flax.linen as nn

    from sbs_jax.model.decoder import decoding
    from sbs_jax.train import causal_evaluation

    cfg, s, layout = plan.config, plan.setup, plan.layout
    params = s.abstract_state.params
    unpacked = dataclasses.replace(cfg, batch_size=eval_rows, pack=False, packed_lengths=None, cut_batches=False)
    (eval_shapes,), _ = _causal_train_shapes(unpacked, layout)
    eval_batch = abstract_batch(eval_shapes, s.mesh)
    eval_fn = evaluation.eval_step_jit(s.model, cfg.objective, s.mesh)

    def under_mesh(lower):
        with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
            return lower()
    programs = [_timed("eval_step", eval_shapes, lambda: under_mesh(lambda: eval_fn.lower(params, eval_batch)),
                       is_refusal)]
    lengths = cfg.task_feature_lengths
    prompt = int(layout.bos_id is not None) + int(lengths["inputs"]) - 1
    new = causal_evaluation.new_tokens(layout, cfg.decode.label_length(lengths), int(lengths.get("rationales", 0)))
    sharding = partitioning.data_sharding(s.mesh)
    tokens = jax.ShapeDtypeStruct((eval_rows, prompt), np.int32, sharding=sharding)
    valid = jax.ShapeDtypeStruct((eval_rows, prompt), np.bool_, sharding=sharding)
    programs.append(_timed("decode", {"prompt_tokens": (eval_rows, prompt), "decode_length": new},
                           lambda: under_mesh(lambda: decoding.greedy_decode.lower(
                               s.model, params, tokens, valid, max_new_tokens=new)), is_refusal))
    return programs


def state_bytes_per_chip(plan: RunPlan) -> dict[str, int]:
    """Bytes of the params and of the optimizer state one chip holds (from their shardings)."""
    state = plan.setup.abstract_state
    return {"params": analysis.per_chip_bytes(state.params), "optimizer_state": analysis.per_chip_bytes(state.opt_state)}
