"""Process-wide JAX settings every training command shares."""
from __future__ import annotations

import os
import pathlib


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache under $SBS_CACHE_DIR (default ~/.cache/sbs_jax): later runs of the same
    model and shapes (`sbs train|eval|infer`, sweep cells, the quickstart) load their steps instead of compiling
    them. A cache directory the user configured (JAX_COMPILATION_CACHE_DIR) is kept."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        cache = pathlib.Path(os.environ.get("SBS_CACHE_DIR", pathlib.Path.home() / ".cache" / "sbs_jax"))
        jax.config.update("jax_compilation_cache_dir", str(cache / "jax_compilation_cache"))
