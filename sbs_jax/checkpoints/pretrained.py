"""`load_pretrained`: one entry point that recognises what a path holds (local or gs://)."""
from etils import epath

from sbs_jax.checkpoints.errors import CheckpointError
from sbs_jax.checkpoints.hf import CONFIG_FILE, WEIGHT_FILES, load_hf
from sbs_jax.checkpoints.t5x import MSGPACK_NAME, load_t5x

# Our own training runs: MODEL_DIR/model_config.json + MODEL_DIR/checkpoints/<step>/ (orbax), or one step dir.
_OWN_CONFIG = "model_config.json"


def detect_format(path) -> str:
    """'hf' | 't5x' | 'sbs' (our training checkpoint) for `path`; CheckpointError when none fits."""
    p = epath.Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_file():
        return "t5x"
    if (p / CONFIG_FILE).is_file() and any((p / w).is_file() for w in WEIGHT_FILES):
        return "hf"
    if (p / _OWN_CONFIG).is_file() or (p.parent.name == "checkpoints" and (p.parent.parent / _OWN_CONFIG).is_file()):
        return "sbs"
    if (p / MSGPACK_NAME).is_file() or any(c.name.startswith("checkpoint_") for c in p.iterdir()):
        return "t5x"
    raise CheckpointError(
        f"{p}: unrecognised checkpoint layout; expected an HF directory ({CONFIG_FILE} + one of "
        f"{', '.join(WEIGHT_FILES)}), a T5X msgpack file or checkpoint_N/ directory, or a training run "
        f"directory with {_OWN_CONFIG}")


def load_pretrained(path) -> tuple:
    """Any supported checkpoint -> (T5Config, params) in the unscanned layout."""
    kind = detect_format(path)
    if kind == "hf":
        return load_hf(path)
    if kind == "t5x":
        return load_t5x(path)
    # Imported lazily: reading a run pulls in orbax.
    from sbs_jax.run_dir import load_params

    config, params, _ = load_params(path)
    return config, params
