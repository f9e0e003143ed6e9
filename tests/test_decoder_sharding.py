"""Decoder-only students under the existing partitioning presets on 8 fake CPU devices: every parameter has
logical axis names, and sharded init + forward give the unsharded logits (scanned and unscanned layers)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbs_jax import partitioning
from sbs_jax.model import unscan_params
from sbs_jax.model.decoder import DecoderConfig, DecoderLM

# Gemma 3 style (q/k norms, sliding + full layers, sandwich norms) with GQA and q/k/v biases: the most
# parameter kinds in one tiny model. Widths divide the 4-way model axis.
CONFIG = DecoderConfig(model_type="gemma3_text", vocab_size=128, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=16.0, rope_theta=1e6,
                       rope_local_theta=1e4, sliding_window=4, attention_bias=True,
                       layer_types=("sliding_attention", "full_attention"), eos_ids=(1,), dtype="float32")


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 128, (8, 12)).astype(np.int32)
    valid = np.ones((8, 12), bool)
    valid[::3, :4] = False
    return tokens, valid


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axis_names(scan):
    config = CONFIG.replace(scan_layers=scan)
    boxed = jax.eval_shape(lambda: DecoderLM(config).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32)))
    specs = nn.get_partition_spec(boxed["params"])
    flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    shapes = dict(jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed["params"])))
    assert len(flat) == len(shapes)
    for path, spec in flat:
        assert len(spec) == len(shapes[path].shape) and all(a in partitioning.LOGICAL_AXES for a in spec), path


@pytest.mark.parametrize("preset, model_axis, scan", [
    pytest.param("data_parallel", 1, False, marks=pytest.mark.slow),
    pytest.param("fsdp", 2, True, marks=pytest.mark.slow),
    ("model_parallel", 4, False)])
def test_sharded_forward_equals_unsharded(preset, model_axis, scan):
    config = CONFIG.replace(scan_layers=scan)
    model = DecoderLM(config)
    tokens, valid = _batch()
    mesh = partitioning.make_mesh(-1, model_axis)
    rules = partitioning.get_rules(preset)
    # Params initialised straight into their shardings from the logical names (the trainer's path); the
    # reference is the unsharded, unscanned model on the same values, gathered to the host.
    with jax.set_mesh(mesh):
        placed, shardings = partitioning.sharded_init(model, mesh, rules, jax.random.key(1), tokens[:1])
    if preset != "data_parallel":
        assert any(s.spec != jax.sharding.PartitionSpec() and any(s.spec) for s in jax.tree.leaves(shardings))
    assert jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding == s, placed, shardings)) == \
        [True] * len(jax.tree.leaves(shardings))
    params = jax.device_get(placed)
    if scan:
        params = unscan_params(params, config)
    expected = jax.jit(DecoderLM(CONFIG).apply)({"params": params}, tokens, valid)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        batch = [jax.device_put(x, partitioning.data_sharding(mesh)) for x in (tokens, valid)]
        logits = jax.jit(model.apply)({"params": placed}, *batch)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=1e-5)


def test_gin_model_files_parse_and_build_their_config():
    import pathlib

    import gin

    from sbs_jax.commands import gin_utils
    from sbs_jax.model.decoder import presets

    gin_utils.register_configurables()
    files = sorted(pathlib.Path(__file__).parents[1].glob("gin/models/*.gin"))
    decoder_files = [f for f in files if not f.name.startswith("t5_")]
    assert {f.stem for f in decoder_files} == set(presets.PRESETS)
    for f in decoder_files:
        with gin.unlock_config():
            gin.clear_config()
            gin.parse_config_file(str(f))
            config = gin.query_parameter("%DECODER_CONFIG").scoped_configurable_fn()
        assert isinstance(config, DecoderConfig) and config.dtype == "bfloat16", f
    gin.clear_config()
    assert presets.get_config("llama3_2_1b").rope_factor == 32.0 and presets.get_config("gemma3_1b").layer_types[5] \
        == "full_attention"
