"""The train step's shardings and its ahead-of-time compilation, free of seqio/TensorFlow.

`Trainer` and the benchmark (bench/ours.py, which runs where neither seqio nor TensorFlow is installed) build
the step through these functions, so what the benchmark times is what training runs: `jax.jit` with the
state's and the batch's shardings, the state donated, `lower(...).compile()` once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import optax

from sbs_jax import partitioning
from sbs_jax.model import T5Config, Transformer
from sbs_jax.model.decoder import DecoderConfig, DecoderLM
from sbs_jax.train import objective as objective_lib, optim, state as state_lib, step as step_lib


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """What a run's train step is built from: the model, its mesh and logical rules, the optimizer and its
    schedule, and the state's shardings and abstract shapes (nothing allocated)."""
    model: Transformer
    mesh: Any
    rules: tuple
    tx: optax.GradientTransformation
    schedule: Callable[[Any], jax.Array]
    state_shardings: state_lib.TrainState
    abstract_state: state_lib.TrainState


def step_setup(model_config: T5Config | DecoderConfig, optimizer: optim.OptimizerConfig, preset: str, mesh_model: int,
               devices: Sequence[jax.Device] | None = None) -> StepSetup:
    """The one construction of a run's step ingredients, shared by `Trainer` (local devices) and `sbs compile`
    (a TPU slice's compile-only devices), so that both compile the same program for the same config."""
    model = DecoderLM(model_config) if isinstance(model_config, DecoderConfig) else Transformer(model_config)
    mesh = partitioning.make_mesh(data=-1, model=mesh_model, devices=devices)
    rules = partitioning.get_rules(preset)
    tx = optim.make_optimizer(optimizer)
    shardings, abstract = state_shardings(model, tx, mesh, rules)
    return StepSetup(model=model, mesh=mesh, rules=rules, tx=tx, schedule=optim.make_schedule(optimizer),
                     state_shardings=shardings, abstract_state=abstract)


def state_shardings(model, tx: optax.GradientTransformation, mesh, rules) -> tuple[state_lib.TrainState,
                                                                                  state_lib.TrainState]:
    """(shardings, abstract state): a `TrainState` of shardings and one of ShapeDtypeStructs carrying them."""
    abstract_params, param_sh = partitioning.param_shardings(model, mesh, rules,
                                                                 **state_lib.dummy_inputs(model=model))
    opt_sh = partitioning.opt_state_shardings(jax.eval_shape(tx.init, abstract_params), abstract_params, param_sh,
                                              mesh)
    rep = partitioning.replicated(mesh)
    shardings = state_lib.TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)
    return shardings, state_lib.abstract_state(tx, abstract_params, shardings)


def abstract_batch(local_batch, mesh) -> dict:
    """ShapeDtypeStructs of the global batch that each process's `local_batch` rows make up, sharded over
    `data` (every process contributes the same number of rows)."""
    sharding = partitioning.data_sharding(mesh)
    scale = jax.process_count()
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] * scale,) + x.shape[1:], x.dtype,
                                                       sharding=sharding), local_batch)


def lower_train_step(model, tx: optax.GradientTransformation, objective: objective_lib.ObjectiveConfig,
                     schedule: Callable[[Any], jax.Array], grad_accum_steps: int, mesh, rules,
                     state_shardings: state_lib.TrainState, abstract_state: state_lib.TrainState,
                     batch_abstract, *, matmul_precision: str | None = None):
    """The step jitted with the state's and the batch's shardings (metrics replicated), the state donated,
    lowered under the mesh and the logical rules from abstract values only (nothing runs on the devices).

    `matmul_precision` ("highest" for true float32 matmuls on GPU/TPU; None = JAX's default) is traced in.
    """
    train_step = step_lib.make_train_step(model, tx, objective, schedule, grad_accum_steps)
    batch_shardings = jax.tree.map(lambda a: a.sharding, batch_abstract)
    with (jax.set_mesh(mesh), nn.logical_axis_rules(rules), jax.default_matmul_precision(matmul_precision)):
        jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                         out_shardings=(state_shardings, partitioning.replicated(mesh)), donate_argnums=0)
        return jitted.lower(abstract_state, batch_abstract)


def compile_train_step(*args, **kwargs):
    """`compiled(state, batch) -> (state, metrics)`: `lower_train_step(...)` compiled ahead of time."""
    return lower_train_step(*args, **kwargs).compile()


def memory_summary(compiled) -> str:
    """XLA's per-device memory accounting of a compiled step, for the log ("" when unavailable)."""
    memory = compiled.memory_analysis()
    if memory is None:
        return ""
    return (f"per device: arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB, "
            f"temporaries {memory.temp_size_in_bytes / 2**20:.1f} MiB")
