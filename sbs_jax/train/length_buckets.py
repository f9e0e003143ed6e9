"""Old name of `sbs_jax.train.batch_cutting` (training batches cut to bucket lengths); import that."""
from sbs_jax.train.batch_cutting import *  # noqa: F401,F403  (old module name)
