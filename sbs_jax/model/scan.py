"""Layer stacks (unrolled `layers_{i}` or `nn.scan` over a leading `layers` axis, optional remat) and the
converters between the unscanned and scanned parameter layouts."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def remat_policy(name: str):
    """`jax.checkpoint` policy for a config's `remat_policy` ("full" saves nothing, recomputes everything)."""
    if name in ("full", "nothing_saveable"):
        return jax.checkpoint_policies.nothing_saveable
    return getattr(jax.checkpoint_policies, name)


def apply_layer_stack(layer_cls, config, num_layers: int, x, *args, per_layer=None, **attrs):
    """Run `num_layers` copies of `layer_cls(config, **attrs)` on `x`; each layer maps (x, *args) -> (x, None).

    Must be called from inside a compact method: the layers become children of the caller, named
    `layers_{i}` (unrolled) or `layers` (scanned, params stacked on axis 0 with logical name `layers`, the
    decode cache stacked on axis 1 so every cache leaf keeps batch as its leading axis). Remat is skipped
    in decode mode (`attrs["decode"]`), where there is no backward pass.

    `per_layer` (an array with a leading `num_layers` axis, e.g. which layers use a sliding window) is
    passed to layer i as its entry i, right after `x`; the other args are the same for every layer.
    """
    decode = attrs.get("decode", False)
    if config.remat_policy != "none" and not decode:
        layer_cls = nn.remat(layer_cls, policy=remat_policy(config.remat_policy),
                             prevent_cse=not config.scan_layers)
    if config.scan_layers:
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 1},
            split_rngs={"params": True, "dropout": True},
            in_axes=((0,) if per_layer is not None else ()) + (nn.broadcast,) * len(args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        layer_args = ((per_layer,) if per_layer is not None else ()) + args
        x, _ = scanned(config, name="layers", **attrs)(x, *layer_args)
        return x
    for i in range(num_layers):
        layer_args = ((per_layer[i],) if per_layer is not None else ()) + args
        x, _ = layer_cls(config, name=f"layers_{i}", **attrs)(x, *layer_args)
    return x


def _stack(trees):
    def stack_leaves(*leaves):
        if all(isinstance(l, np.ndarray) for l in leaves):
            return np.stack(leaves)
        return jnp.stack(leaves)
    return jax.tree.map(stack_leaves, *trees)


def scan_params(params: Mapping[str, Any], config) -> dict:
    """Unscanned (`encoder/layers_{i}/...`) -> scanned (`encoder/layers/...`, leading `layers` axis).

    Params already in the scanned layout are returned unchanged.
    """
    out = dict(params)
    for stack, n in config.layer_stacks.items():
        tree = dict(params[stack])
        if "layers" in tree:
            continue
        missing = [f"{stack}/layers_{i}" for i in range(n) if f"layers_{i}" not in tree]
        if missing:
            raise ValueError(f"scan_params: params lack {missing} (config has {n} {stack} layers)")
        layers = [tree.pop(f"layers_{i}") for i in range(n)]
        extra = [k for k in tree if k.startswith("layers_")]
        if extra:
            raise ValueError(f"scan_params: {stack} has more layers than config says ({n}): {extra}")
        tree["layers"] = _stack(layers)
        out[stack] = tree
    return out


def unscan_params(params: Mapping[str, Any], config) -> dict:
    """Scanned (`encoder/layers/...`) -> unscanned (`encoder/layers_{i}/...`); unscanned input is returned as is."""
    out = dict(params)
    for stack, n in config.layer_stacks.items():
        tree = dict(params[stack])
        if "layers" not in tree:
            continue
        stacked = tree.pop("layers")
        for path, leaf in jax.tree_util.tree_leaves_with_path(stacked):
            if leaf.shape[0] != n:
                raise ValueError(f"unscan_params: {stack}/layers{jax.tree_util.keystr(path)} has leading axis "
                                 f"{leaf.shape[0]}, expected {n} layers")
        for i in range(n):
            tree[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
        out[stack] = tree
    return out
