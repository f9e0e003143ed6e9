"""Optimizers and learning-rate schedules: optax AdamW (the paper) and Adafactor (T5X's default)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "linear", "cosine", "rsqrt")
OPTIMIZERS = ("adamw", "adafactor")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """name: `adamw` (paper: lr 5e-5, no weight decay, as HF's Trainer) or `adafactor` (T5X: factored second
    moments, decay 0.8, update clipping 1.0, parameter-scaled steps).
    schedule: `constant`; `linear` (warmup then linear decay to `end_learning_rate` at `decay_steps`); `cosine`;
    `rsqrt` (T5X pre-training: `learning_rate / sqrt(max(step, warmup_steps))`, constant during warmup).
    clip_norm: global-norm gradient clipping (0 = off).
    """
    name: str = "adamw"
    learning_rate: float = 5e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    end_learning_rate: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 0.0
    # Adafactor only.
    decay_rate: float = 0.8
    multiply_by_parameter_scale: bool = True
    clipping_threshold: float = 1.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"OptimizerConfig.name: expected one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimizerConfig.schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule in ("linear", "cosine") and self.decay_steps <= self.warmup_steps:
            raise ValueError(f"OptimizerConfig.decay_steps: a {self.schedule} schedule needs decay_steps > "
                             f"warmup_steps ({self.warmup_steps}), got {self.decay_steps}")


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    lr, warmup = config.learning_rate, config.warmup_steps
    if config.schedule == "constant":
        if warmup:
            return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
                                        [warmup])
        return optax.constant_schedule(lr)
    if config.schedule == "linear":
        if not warmup:  # HF Trainer's default: linear decay from the first step
            return optax.linear_schedule(lr, config.end_learning_rate, config.decay_steps)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup),
             optax.linear_schedule(lr, config.end_learning_rate, config.decay_steps - warmup)], [warmup])
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, config.decay_steps, config.end_learning_rate)
    floor = float(max(warmup, 1))
    return lambda step: lr / jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), floor))


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    schedule = make_schedule(config)
    if config.name == "adamw":
        tx = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay)
    else:
        tx = optax.adafactor(schedule, decay_rate=config.decay_rate,
                             multiply_by_parameter_scale=config.multiply_by_parameter_scale,
                             clipping_threshold=config.clipping_threshold, weight_decay_rate=config.weight_decay
                             or None)
    if config.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
    return tx
