"""HF or T5X checkpoint -> HF directory (loadable by transformers and by INITIAL_CHECKPOINT_PATH).

The `sbs convert` command (`sbs_jax.commands.convert`) is the user-facing entry.
"""
from etils import epath

from sbs_jax.checkpoints.hf import load_hf, save_hf
from sbs_jax.checkpoints.t5x import load_t5x

LOADERS = {"hf": load_hf, "t5x": load_t5x}


def convert(source_format: str, input_path: str, output: epath.Path, *, dtype: str = "float32",
            spiece_model: str | None = None):
    """Load a `source_format` checkpoint and save it as an HF directory; returns (config, params)."""
    config, params = LOADERS[source_format](input_path)
    save_hf(output, config, params, dtype=dtype, spiece_model=spiece_model)
    return config, params
