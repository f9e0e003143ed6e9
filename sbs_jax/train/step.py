"""The train and eval steps as pure functions of (state, batch); `trainer` jits and shards them."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from sbs_jax.train import causal_objective, objective as objective_lib
from sbs_jax.train.state import TrainState

Batch = Mapping[str, Mapping[str, jax.Array]]  # {"label", "rationale"} streams or {"packed": rows}


def _split_microbatches(batch: Batch, num: int) -> Batch:
    """[batch, ...] -> [num, batch // num, ...], microbatch i holding rows i, i + num, i + 2·num, ...

    Strided rather than contiguous so that every microbatch keeps rows on every data shard.
    """
    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={num}")
        return jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def _token_weighted(metrics: Mapping[str, jax.Array], streams) -> dict[str, jax.Array]:
    """Per-stream metrics summed over tokens, so that microbatch (or eval batch) results can be added."""
    out = {}
    for s in streams:
        n = metrics[f"{s}/num_tokens"]
        out[f"{s}/num_tokens"] = n
        for k in ("loss", "accuracy", "z_loss"):
            if f"{s}/{k}" in metrics:
                out[f"{s}/{k}_sum"] = metrics[f"{s}/{k}"] * n
    return out


def _token_means(sums: Mapping[str, jax.Array], streams) -> dict[str, jax.Array]:
    out = {}
    for s in streams:
        n = sums[f"{s}/num_tokens"]
        out[f"{s}/num_tokens"] = n
        for k in ("loss", "accuracy", "z_loss"):
            if f"{s}/{k}_sum" in sums:
                out[f"{s}/{k}"] = sums[f"{s}/{k}_sum"] / jnp.maximum(n, 1.0)
    return out


def objective_module(batch: Batch):
    """The objective of a batch's form: causal rows (decoder-only students) or encoder-decoder streams."""
    return causal_objective if causal_objective.is_causal(batch) else objective_lib


def make_train_step(model, tx: optax.GradientTransformation, config: objective_lib.ObjectiveConfig,
                    schedule: Callable[[Any], jax.Array], grad_accum_steps: int = 1):
    """`train_step(state, batch) -> (state, metrics)`.

    The dropout RNG of step t is `fold_in(base_rng, t)` (microbatch i: `fold_in(that, i)`), so a resumed run
    draws exactly what an uninterrupted one would. With accumulation, each microbatch's token-sum loss is divided
    by the whole batch's token count per stream, so the accumulated gradient equals the full-batch gradient.
    Batches are paired (`{"label", "rationale"}`) or packed (`{"packed": rows}`; accumulation splits rows).
    Metrics add `num_examples` (examples in the global batch; varies per step when packed).
    """
    streams = config.streams

    def grad_fn(params, batch, rng, counts):
        def loss(p):
            return objective_module(batch).loss_fn(model, p, batch, rng, config, enable_dropout=True,
                                                   num_tokens=counts)
        return jax.value_and_grad(loss, has_aux=True)(params)

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        objective = objective_module(batch)
        counts = objective.token_counts(config, batch)
        if grad_accum_steps == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, rng, counts)
            sums = _token_weighted(metrics, streams)
        else:
            micro = _split_microbatches(objective.train_inputs(config, batch), grad_accum_steps)

            def body(carry, xs):
                grads_acc, loss_acc = carry
                index, mb = xs
                (loss, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, index), counts)
                grads_acc = jax.tree.map(jnp.add, grads_acc, g)
                return (grads_acc, loss_acc + loss), _token_weighted(m, streams)

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads, loss), per_micro = jax.lax.scan(
                body, (zeros, jnp.zeros((), jnp.float32)), (jnp.arange(grad_accum_steps), micro))
            sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), per_micro)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = _token_means(sums, streams)
        metrics.update({"loss": loss, "num_examples": objective.num_examples(batch),
                        "grad_norm": optax.global_norm(grads),
                        "learning_rate": jnp.asarray(schedule(state.step), jnp.float32)})
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(model, config: objective_lib.ObjectiveConfig):
    """`eval_step(params, batch) -> token-summed metrics` (teacher-forced, no dropout); add them over batches
    and finish with `finish_eval_metrics`."""
    def eval_step(params, batch: Batch):
        _, metrics = objective_module(batch).loss_fn(model, params, batch, jax.random.key(0), config,
                                                     enable_dropout=False)
        return _token_weighted(metrics, config.streams)
    return eval_step


def finish_eval_metrics(sums: Mapping[str, Any], config: objective_lib.ObjectiveConfig) -> dict[str, float]:
    means = _token_means({k: jnp.asarray(v) for k, v in sums.items()}, config.streams)
    weights = config.stream_weights()
    out = {k: float(v) for k, v in means.items()}
    out["loss"] = sum(weights[s] * out[f"{s}/loss"] for s in config.streams)
    return out
