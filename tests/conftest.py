"""Test setup: 8 fake CPU devices (set before jax is imported) and paths to the shared read-only data."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# With libtpu installed (the test extra: `sbs compile`'s tests), JAX would also start its TPU backend, which on
# a machine without a TPU prints metadata-server errors and takes libtpu's process lockfile; the suite runs on
# CPU, and the TPU slices it compiles for are compile-only devices (sbs_jax.tpu.topologies).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

# TensorFlow and triton (which CUDA builds of torch import lazily, e.g. via transformers) each bundle LLVM;
# triton segfaults when it loads after TensorFlow, so load it first where it is installed. torch 2.13's
# Python 3.12 wheels on PyPI are CUDA builds; the CPU wheel used on 3.11 has no triton.
try:
    import triton  # noqa: F401,E402
except ImportError:
    pass

REPO = pathlib.Path(__file__).resolve().parents[1]
# The shared data lives beside the checkout (../shared); SBS_SHARED overrides it.
SHARED = pathlib.Path(os.environ.get("SBS_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED} (set SBS_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def datasets_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "datasets"


@pytest.fixture(scope="session")
def t5x_tiny_checkpoint(shared_dir) -> pathlib.Path:
    return shared_dir / "checkpoints" / "t5x_tiny" / "test_t5_tiny.checkpoint_0"
