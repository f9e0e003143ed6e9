"""T5X checkpoints -> our parameter tree (the T5X names are our names; only the container differs).

Two containers exist, both a flax msgpack `{"version": 3, "optimizer": {"target": params, "state": ...}}`:
- the legacy single file, every array stored inline;
- the directory form public T5X checkpoints use (`checkpoint_N/checkpoint` + one zarr folder per large
  array): in the msgpack, such an array is replaced by its TensorStore spec, whose path is relative to
  the checkpoint directory (T5X writes it so checkpoints can be moved): it is resolved against wherever the
  checkpoint now is, a local folder or gs://, whatever driver the spec names.
Scanned checkpoints (`layers` stacked on one axis) are unstacked into `layers_{i}`.
"""
import os
import re
from typing import Any, Optional

import numpy as np
from etils import epath

from sbs_jax import paths
from sbs_jax.checkpoints.errors import CheckpointError
from sbs_jax.checkpoints.layout import check_params, flatten

MSGPACK_NAME = "checkpoint"
_T5X_SCAN_AXIS = 1  # T5X's `param_scan_axis` default


def _is_ts_spec(value) -> bool:
    return isinstance(value, dict) and "driver" in value and ("kvstore" in value or "path" in value)


def _read_ts_array(spec: dict, ckpt_dir: epath.Path, name: str) -> np.ndarray:
    import tensorstore as ts

    spec = dict(spec)
    # tensorstore >= 0.1.14 keeps the relative path in the kvstore, older versions at the top level.
    rel = spec["kvstore"].get("path") if isinstance(spec.get("kvstore"), dict) else spec.pop("path", None)
    if not isinstance(rel, str):
        raise CheckpointError(f"{ckpt_dir}: array {name} has a TensorStore spec without a path: {spec}")
    array_dir = ckpt_dir / rel
    # A gs:// checkpoint is read through its kvstore URL, a local one through the file driver.
    spec["kvstore"] = ({"driver": "file", "path": str(array_dir)} if paths.is_local(array_dir)
                       else os.fspath(array_dir))
    if not array_dir.exists():
        raise CheckpointError(f"{ckpt_dir}: array {name} refers to {rel}, which does not exist")
    try:
        return np.asarray(ts.open(spec, open=True, read=True).result().read().result())
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{array_dir}: cannot read array {name} with TensorStore: {e}") from e


def _resolve_path(path: epath.Path) -> epath.Path:
    """A msgpack file, a `checkpoint_N` directory, or a folder of `checkpoint_N` (latest wins)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or directory")
    if (path / MSGPACK_NAME).is_file():
        return path / MSGPACK_NAME
    steps = [(int(m.group(1)), p) for p in path.iterdir()
             if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and (p / MSGPACK_NAME).is_file()]
    if steps:
        return max(steps)[1] / MSGPACK_NAME
    raise CheckpointError(f"{path}: not a T5X checkpoint (no '{MSGPACK_NAME}' file and no checkpoint_N/ folders)")


def read_t5x_target(path) -> dict[str, np.ndarray]:
    """The flat `path -> float32 array` params of a T5X checkpoint (optimizer state is not read)."""
    from flax import serialization

    file = _resolve_path(epath.Path(path))
    raw = file.read_bytes()
    if raw.startswith(b"model_checkpoint_path"):
        raise CheckpointError(f"{file}: this is a TensorFlow (Mesh TF) checkpoint index, not a T5X checkpoint")
    try:
        contents = serialization.msgpack_restore(raw)
    except Exception as e:  # msgpack raises several unrelated types for garbage input
        raise CheckpointError(f"{file}: not a T5X msgpack checkpoint ({type(e).__name__}: {e})") from e
    optimizer = contents.get("optimizer") if isinstance(contents, dict) else None
    target = optimizer.get("target") if isinstance(optimizer, dict) else None
    if not isinstance(target, dict):
        found = sorted(contents) if isinstance(contents, dict) else type(contents).__name__
        raise CheckpointError(f"{file}: expected T5X contents {{'version', 'optimizer': {{'target': ...}}}}, "
                              f"found {found}")
    flat = {}
    for name, value in _flatten_with_specs(target).items():
        if _is_ts_spec(value):
            value = _read_ts_array(value, file.parent, name)
        numeric = isinstance(value, np.ndarray) and (value.dtype.kind in "fiu" or value.dtype.name == "bfloat16")
        if not numeric:
            raise CheckpointError(f"{file}: entry {name} is not an array ({type(value).__name__})")
        flat[name] = np.asarray(value, dtype=np.float32)
    return flat


def _flatten_with_specs(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not _is_ts_spec(value):
            flat.update(_flatten_with_specs(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _unscan(flat: dict[str, np.ndarray], source) -> dict[str, np.ndarray]:
    """`encoder/layers/...` stacked on one axis -> `encoder/layers_{i}/...`."""
    out = {k: v for k, v in flat.items() if not re.match(r"(encoder|decoder)/layers/", k)}
    d_model = flat["token_embedder/embedding"].shape[1]
    for stack in ("encoder", "decoder"):
        stacked = {k[len(stack) + 8:]: v for k, v in flat.items() if k.startswith(f"{stack}/layers/")}
        if not stacked:
            continue
        if any("relative_posemb" in k for k in stacked):
            raise CheckpointError(f"{source}: per-layer relative position embeddings (t5x scalable_t5 "
                                  "'relative_posemb') are not T5; this model shares one table per stack")
        # Find the layer axis from a layer-norm scale: [layers, embed] or [embed, layers].
        scale = next(v for k, v in stacked.items() if k.endswith("/scale"))
        axis = 0 if scale.shape[1] == d_model and scale.shape[0] != d_model else _T5X_SCAN_AXIS
        n_layers = scale.shape[axis]
        for name, value in stacked.items():
            if value.shape[axis] != n_layers:
                raise CheckpointError(f"{source}: scanned tensor {stack}/layers/{name} has shape {value.shape}; "
                                      f"expected {n_layers} layers on axis {axis}")
            for i in range(n_layers):
                out[f"{stack}/layers_{i}/{name}"] = np.take(value, i, axis=axis)
    return out


def infer_config(flat: dict[str, np.ndarray], source):
    """T5Config from the tensor shapes alone (v1.1 gated-GELU assumed whenever `wi_0` exists)."""
    from sbs_jax.model.t5.config import T5Config

    def shape(name):
        if name not in flat:
            raise CheckpointError(f"{source}: missing tensor {name}; cannot infer the model config")
        return flat[name].shape

    vocab, d_model = shape("token_embedder/embedding")
    heads, buckets = shape("encoder/relpos_bias/rel_embedding")
    joined = shape("encoder/layers_0/attention/query/kernel")[1]
    if joined % heads:
        raise CheckpointError(f"{source}: attention width {joined} is not a multiple of {heads} heads")
    gated = "encoder/layers_0/mlp/wi_0/kernel" in flat

    def count(stack):
        return len({m.group(1) for k in flat if (m := re.match(rf"{stack}/layers_(\d+)/", k))})

    n_enc, n_dec = count("encoder"), count("decoder")
    return T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=joined // heads, d_ff=shape("encoder/layers_0/mlp/wo/kernel")[0],
        num_layers=n_enc, num_decoder_layers=None if n_dec == n_enc else n_dec, num_heads=heads,
        relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings="decoder/logits_dense/kernel" not in flat)


def load_t5x(path, config: Optional[Any] = None) -> tuple:
    """A T5X checkpoint (msgpack file, `checkpoint_N/` directory, or its parent) -> (T5Config, params).

    Without `config`, the architecture is inferred from the shapes (relu vs gated-GELU from `wi` vs `wi_0`,
    tied vs `logits_dense`); give `config` for other activations or to check against a known size.
    """
    source = epath.Path(path)
    flat = read_t5x_target(source)
    if "token_embedder/embedding" not in flat:
        raise CheckpointError(f"{source}: missing tensor token_embedder/embedding; not a T5 checkpoint")
    if any(re.match(r"(encoder|decoder)/layers/", k) for k in flat):
        flat = _unscan(flat, source)
    config = infer_config(flat, source) if config is None else config
    return config, check_params(flat, config, str(source))
