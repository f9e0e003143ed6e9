"""sbs-jax: Distilling Step-by-Step (Hsieh et al., 2023) with T5 students in JAX/Flax."""

__version__ = "0.1.0"
