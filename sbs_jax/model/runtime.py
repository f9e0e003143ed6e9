"""Runtime options every model config shares: compute dtypes and rematerialisation policies."""
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = (
    "none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "nothing_saveable",
    "everything_saveable",
)
