"""Paths of run directories, checkpoints and exports: local, or on Cloud Storage (`MODEL_DIR=gs://bucket/run`).

Such paths are `etils.epath.Path`s, as in orbax: local files go through `os`, gs:// through tf.io.gfile (or
gcsfs with `EPATH_USE_TF=false`). An object store differs from a file system in three ways handled here: a
URI must never go through `absolute()` or `pathlib` (both turn `gs://b/x` into a local `gs:/b/x`), objects
cannot be appended to, and libraries that only open local files (safetensors, sentencepiece) get bytes.
"""
from __future__ import annotations

import os

from etils import epath


def is_local(path) -> bool:
    """False for a URI such as gs://bucket/run."""
    return "://" not in os.fspath(path)


def absolute(path) -> epath.Path:
    """`path` as an epath.Path; a local one made absolute (a URI already is)."""
    p = epath.Path(path)
    return p.absolute() if is_local(p) else p


def append_text(path: epath.Path, text: str) -> None:
    """Append `text` to a file; an object store has no append, so its object is rewritten with `text` added."""
    if is_local(path):
        with path.open("a") as f:
            f.write(text)
        return
    old = path.read_text() if path.exists() else ""
    path.write_text(old + text)


def save_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    from safetensors.numpy import save, save_file

    if is_local(path):
        save_file(tensors, os.fspath(path), metadata=metadata)
    else:
        epath.Path(path).write_bytes(save(tensors, metadata=metadata))


def load_safetensors(path) -> dict:
    """`{name: numpy array}`; a local file is memory-mapped, a remote one read whole."""
    from safetensors.numpy import load, load_file

    return load_file(os.fspath(path)) if is_local(path) else load(epath.Path(path).read_bytes())


def read_utf8(path, what: str = "file") -> str:
    """A text file's contents; a file that is not UTF-8 is an InputError naming it and the offending byte."""
    from sbs_jax.errors import InputError

    p = epath.Path(path)
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{p}:{line}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "convert it to UTF-8") from None
