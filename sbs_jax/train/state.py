"""The train state (params, optimizer state, step, RNG) and its creation directly in its shardings."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbs_jax.data import schema
from sbs_jax.model.decoder import DecoderLM


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 scalar: optimizer steps taken == batches consumed
    params: Any            # float32 master params (compute may be bfloat16)
    opt_state: Any
    rng: jax.Array         # uint32 raw key data of the run's base key; step t uses fold_in(rng, t)


def dummy_inputs(batch: int = 1, length: int = 8, model=None) -> dict[str, np.ndarray]:
    """Arguments that `model.init` traces the parameter shapes with (an encoder-decoder without `model`)."""
    tokens = np.ones((batch, length), np.int32)
    if isinstance(model, DecoderLM):
        return {"tokens": tokens}
    return {schema.ENCODER_INPUT_TOKENS: tokens, schema.DECODER_INPUT_TOKENS: tokens}


def abstract_state(tx, abstract_params, shardings_tree: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings: what orbax restores into and what `lower` traces."""
    state = jax.eval_shape(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                                                rng=jax.random.key_data(jax.random.key(0))), abstract_params)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings_tree)


def create_state(model, tx, mesh, rules, seed: int, shardings_tree: TrainState, init_params=None) -> TrainState:
    """A fresh state placed in its shardings. Params come from `model.init` (seeded) or from `init_params`
    (an imported checkpoint: params only, fresh optimizer)."""
    init_key, step_key = jax.random.split(jax.random.key(seed))

    def init(params):
        if params is None:
            with nn.logical_axis_rules(rules):
                params = nn.meta.unbox(model.init(init_key, **dummy_inputs(model=model)))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.key_data(step_key))

    with jax.set_mesh(mesh):
        if init_params is None:
            return jax.jit(lambda: init(None), out_shardings=shardings_tree)()
        placed = jax.device_put(init_params, shardings_tree.params)
        return jax.jit(init, in_shardings=(shardings_tree.params,), out_shardings=shardings_tree)(placed)
