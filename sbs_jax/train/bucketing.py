"""Old name of `sbs_jax.train.decode_batching` (decoding batches of similar input length); import that."""
from sbs_jax.train.decode_batching import *  # noqa: F401,F403  (old module name)
