"""Device mesh, logical-axis rule presets and sharded initialisation.

This is the only module that names mesh axes (`data`, `model`). Model code names logical axes
(`batch, length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets, layers`); a rule preset maps them
to mesh axes, T5X style: rules are tried in order and a mesh axis already used by an earlier dimension of
the same array is skipped, so `embed -> data` (fsdp) shards parameters but not `[batch, length, embed]`
activations, whose batch already took `data`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"
LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "joined_kv", "vocab", "relpos_buckets",
                "layers")

# One table: logical axis -> mesh axis per preset. Order matters (earlier rules claim mesh axes first).
_RULES = {
    "data_parallel": (("batch", DATA),),
    "model_parallel": (("batch", DATA), ("mlp", MODEL), ("heads", MODEL), ("vocab", MODEL),
                       ("joined_kv", MODEL)),
    "fsdp": (("batch", DATA), ("mlp", MODEL), ("heads", MODEL), ("vocab", MODEL), ("joined_kv", MODEL),
             ("embed", DATA)),
}
RULE_PRESETS = tuple(_RULES)

LogicalRules = Sequence[tuple[str, Optional[str]]]


def get_rules(preset: str = "data_parallel") -> tuple[tuple[str, Optional[str]], ...]:
    """Logical axis rules of a preset; every logical axis not mapped to a mesh axis is replicated."""
    if preset not in _RULES:
        raise ValueError(f"unknown partitioning preset {preset!r}; expected one of {RULE_PRESETS}")
    rules = _RULES[preset]
    mapped = {name for name, _ in rules}
    return tuple(rules) + tuple((name, None) for name in LOGICAL_AXES if name not in mapped)


def make_mesh(data: int = -1, model: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A (data, model) mesh with Auto axis types over all (global, multi-process) devices.

    `data=-1` takes every device not used by `model`. Device order follows `jax.make_mesh` (topology aware
    on TPU/GPU) for `devices` (default: all devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if model <= 0 or n % model:
        raise ValueError(f"make_mesh: model={model} must be a positive divisor of the {n} devices")
    if data == -1:
        data = n // model
    if data * model != n:
        raise ValueError(f"make_mesh: data={data} x model={model} = {data * model} != {n} devices")
    # `jax.make_mesh` orders the devices by the slice's physical layout, for the local devices and for the
    # compile-only devices of a TPU topology alike (`sbs compile`), so both see the same mesh.
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Tree of logical `PartitionSpec`s (from `nn.get_partition_spec`) -> tree of `NamedSharding`s."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for batch arrays: leading (batch) axis over `data`, the rest replicated."""
    return NamedSharding(mesh, P(DATA))


def round_up_to_data(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the `data` axis, so a batch splits evenly over it."""
    data = mesh.shape[DATA]
    return -(-int(batch_size) // data) * data


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _init_variables(model: nn.Module, rng, init_args, init_kwargs):
    """`model.init` on zeros shaped like the example inputs (init depends on shapes only), created inside the
    trace so that arrays and `jax.ShapeDtypeStruct`s both work and no input is baked in as a constant."""
    def zeros_like(x):
        return jnp.zeros(x.shape, x.dtype) if hasattr(x, "shape") and hasattr(x, "dtype") else x
    return model.init(rng, *jax.tree.map(zeros_like, init_args), **jax.tree.map(zeros_like, init_kwargs))


def param_shardings(model: nn.Module, mesh: Mesh, rules: LogicalRules, *init_args, **init_kwargs):
    """(abstract params, shardings) from the model's logical axis names, without allocating anything.

    `init_args` are example inputs (arrays or `jax.ShapeDtypeStruct`s) for `model.init`. Nothing runs on the
    mesh's devices (they may be compile-only TPU devices, `sbs compile`): the key is abstract too.
    """
    key = jax.eval_shape(lambda: jax.random.key(0))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda r: _init_variables(model, r, init_args, init_kwargs), key)
    specs = nn.get_partition_spec(boxed["params"])
    return nn.meta.unbox(boxed["params"]), logical_to_shardings(specs, mesh, rules)


def sharded_init(model: nn.Module, mesh: Mesh, rules: LogicalRules, rng, *init_args, **init_kwargs):
    """Initialise params directly into their shardings (no device ever holds the whole model).

    Returns (params, shardings): plain (unboxed) arrays and the matching tree of `NamedSharding`s.
    """
    _, shardings = param_shardings(model, mesh, rules, *init_args, **init_kwargs)

    def init(r):
        return nn.meta.unbox(_init_variables(model, r, init_args, init_kwargs)["params"])

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        params = jax.jit(init, out_shardings=shardings)(rng)
    return params, shardings


def _divisible(shape, spec: P, mesh: Mesh) -> bool:
    for dim, axes in zip(shape, tuple(spec)):
        if axes is None:
            continue
        size = int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))
        if dim % size:
            return False
    return True


def _state_leaf_sharding(leaf, param, sharding: NamedSharding, mesh: Mesh) -> NamedSharding:
    """Sharding of one optimizer-state leaf that sits where `param` sits in a params-shaped subtree."""
    shape = tuple(getattr(leaf, "shape", ()))
    spec = tuple(sharding.spec) + (None,) * (len(param.shape) - len(tuple(sharding.spec)))
    if shape == tuple(param.shape):
        return sharding
    # Factored second moments (adafactor v_row / v_col): the param's shape with one axis reduced away.
    candidates = {spec[:i] + spec[i + 1:] for i in range(len(param.shape))
                  if tuple(param.shape[:i]) + tuple(param.shape[i + 1:]) == shape}
    if len(candidates) == 1:
        reduced = P(*candidates.pop())
        if _divisible(shape, reduced, mesh):
            return NamedSharding(mesh, reduced)
    return replicated(mesh)


def opt_state_shardings(opt_state_abstract: Any, params_abstract: Any, param_shardings_tree: Any, mesh: Mesh):
    """Shardings for an optax state: every subtree shaped like the params gets the params' shardings leaf by
    leaf (reduced-rank factored leaves drop the reduced axis), everything else (counts, scalars) is
    replicated. Works for adamw (mu/nu), adafactor (v_row/v_col/v) and chains of them."""
    params_def = jax.tree.structure(params_abstract)

    def is_params_like(node) -> bool:
        return node is not None and jax.tree.structure(node) == params_def and jax.tree.leaves(node) != []

    def assign(node):
        if is_params_like(node):
            return jax.tree.map(lambda l, p, s: _state_leaf_sharding(l, p, s, mesh), node, params_abstract,
                                param_shardings_tree)
        return replicated(mesh)

    return jax.tree.map(assign, opt_state_abstract, is_leaf=is_params_like)
