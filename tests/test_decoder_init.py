"""A decoder-only student trained from scratch starts where HF's `_init_weights` starts it: every linear
kernel and the embedding normal(0, initializer_range) (T5's embedding init, std 1, made the tiny Llama's first
loss ~47 nats on a 512-token vocabulary), so the first loss is about ln(vocab)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax.model.decoder import DecoderConfig, DecoderLM, presets


@pytest.mark.parametrize("name", ["llama_tiny", "qwen2_tiny", "gemma2_tiny"])
def test_init_follows_initializer_range_and_starts_near_uniform(name):
    config = presets.get_config(name, vocab_size=512, eos_ids=(1,), bos_id=2, dtype="float32",
                                initializer_range=0.05)
    variables = DecoderLM(config).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))
    for path, leaf in jax.tree_util.tree_leaves_with_path(nn.unbox(variables["params"])):
        name_ = jax.tree_util.keystr(path)
        if name_.endswith("['kernel']") or name_.endswith("['embedding']"):
            assert np.std(np.asarray(leaf)) == pytest.approx(0.05, rel=0.15), name_
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 3, 512)
    logits = DecoderLM(config.replace(initializer_range=0.02)).apply(
        DecoderLM(config.replace(initializer_range=0.02)).init(jax.random.key(0), tokens), tokens)
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1))
    assert abs(float(loss) - np.log(512)) < 0.5


def test_initializer_range_round_trips_through_the_hf_config():
    config = presets.get_config("llama_tiny", initializer_range=0.03)
    assert config.to_hf_dict()["initializer_range"] == 0.03
    assert DecoderConfig.from_hf_dict(config.to_hf_dict()).initializer_range == 0.03

