"""sbs-jax: Distilling Step-by-Step in JAX/Flax."""
from setuptools import setup

# The top-level `tasks/` folder (SeqIO registrations) installs as `sbs_jax.tasks`, and `gin/` ships as
# package data of `sbs_jax.gin_configs`, so a non-editable install finds both.
setup(
    name="sbs-jax",
    version="0.1.0",
    description="Distilling Step-by-Step (Hsieh et al., 2023): T5 students in JAX/Flax on TPU and GPU",
    python_requires=">=3.11",
    packages=[
        "sbs_jax", "sbs_jax.model", "sbs_jax.model.t5", "sbs_jax.model.decoder", "sbs_jax.checkpoints",
        "sbs_jax.data", "sbs_jax.data.records", "sbs_jax.data.registry", "sbs_jax.data.vocab",
        "sbs_jax.data.input_pipeline", "sbs_jax.data.scoring", "sbs_jax.train",
        "sbs_jax.teacher", "sbs_jax.export", "sbs_jax.sweep", "sbs_jax.commands", "sbs_jax.tasks", "sbs_jax.tpu",
        "sbs_jax.gin_configs",
    ],
    package_dir={"sbs_jax.tasks": "tasks", "sbs_jax.gin_configs": "gin"},
    package_data={"sbs_jax.gin_configs": ["*.gin", "*/*.gin"], "sbs_jax.teacher": ["templates/*"]},
    install_requires=[
        "jax>=0.10.2", "flax>=0.12.8", "optax>=0.2.8", "orbax-checkpoint>=0.12.8", "seqio>=0.0.20",
        # tensorflow-text pins `tensorflow` (not tensorflow-cpu); listing both installs both.
        "tensorflow>=2.21.0", "tensorflow-text>=2.21.1", "tensorflow-datasets>=4.9.10",
        # tensorflow-datasets imports importlib_resources to build datasets but does not declare it.
        "importlib_resources>=6",
        # tokenizers: `sbs export --format hf` builds tokenizer.json from the SentencePiece model.
        "gin-config>=0.5.0", "sentencepiece>=0.2.3", "tokenizers>=0.20", "clu>=0.0.12", "safetensors>=0.4", "numpy>=1.26",
        # Local and gs:// run directories (orbax depends on it too).
        "etils[epath]>=1.15.0",
        # `sbs sweep` figures (Agg backend, PNG); scipy (a jax dependency) gives its t intervals.
        "matplotlib>=3.8", "scipy>=1.11",
    ],
    extras_require={
        # gcsfs + the GCS emulator: tests/test_gcs.py runs MODEL_DIR=gs:// against a local emulator.
        "test": ["pytest>=8", "torch==2.13.0", "transformers==5.24.0", "gcsfs>=2026.9.0",
                 "gcp-storage-emulator>=2026.7.19",
                 # bench/parity_reference.py and tests/test_parity_*.py: the official selection semantics.
                 "datasets==5.2.0",
                 # `sbs compile` compiles for TPU slices without a TPU (tests/test_tpu_compile.py); ~480 MB
                 # installed, Linux x86-64 wheels only.
                 "libtpu>=0.0.52; sys_platform == 'linux' and platform_machine == 'x86_64'"],
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
    entry_points={"console_scripts": ["sbs=sbs_jax.cli:main"]},
)
