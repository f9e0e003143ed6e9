"""Tests for the mesh, rule presets, sharded init and optimizer-state shardings on 8 fake CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from sbs_jax import partitioning
from sbs_jax.model import Transformer, get_config
from sbs_jax.model.losses import token_mean_cross_entropy

# One layer per stack keeps compiles short on a loaded 2-core CPU; every parameter kind is still present.
CFG = get_config("t5_1_1_tiny", vocab_size=128, dtype="float32", dropout_rate=0.0, num_layers=1)
ENC = np.random.RandomState(0).randint(1, 128, (8, 12)).astype(np.int32)
TGT = np.random.RandomState(1).randint(1, 128, (8, 6)).astype(np.int32)
ENC[3, 7:] = 0
TGT[5, 4:] = 0
DEC_IN = np.concatenate([np.zeros((8, 1), np.int32), TGT[:, :-1]], axis=1)


def init_args():
    return (jax.ShapeDtypeStruct((8, 12), jnp.int32), jax.ShapeDtypeStruct((8, 6), jnp.int32))


def test_eight_fake_devices():
    assert jax.device_count() == 8
    # The default mesh puts every device on `data`; a batch sharded over it gives each device its own rows,
    # a replicated array gives each device everything, and batch sizes round up to a multiple of 8.
    mesh = partitioning.make_mesh()
    assert dict(mesh.shape) == {"data": 8, "model": 1}
    batch = jax.device_put(np.arange(32).reshape(16, 2), partitioning.data_sharding(mesh))
    shards = sorted(batch.addressable_shards, key=lambda s: int(s.data[0, 0]))
    assert [np.asarray(s.data).tolist() for s in shards] == [[[4 * i, 4 * i + 1], [4 * i + 2, 4 * i + 3]]
                                                             for i in range(8)]
    assert len({s.device for s in shards}) == 8
    full = jax.device_put(np.arange(5), partitioning.replicated(mesh))
    assert all(np.asarray(s.data).tolist() == list(range(5)) for s in full.addressable_shards)
    assert [partitioning.round_up_to_data(n, mesh) for n in (1, 8, 9, 200)] == [8, 8, 16, 200]


def test_make_mesh_shapes_and_errors():
    for data, model in ((8, 1), (4, 2), (2, 4), (-1, 2)):
        mesh = partitioning.make_mesh(data, model)
        assert mesh.axis_names == ("data", "model")
        assert mesh.shape["model"] == model and mesh.shape["data"] * model == 8
        assert all(t == AxisType.Auto for t in mesh.axis_types)
    sub = partitioning.make_mesh(2, 2, devices=jax.devices()[:4])
    assert sub.devices.shape == (2, 2)
    with pytest.raises(ValueError, match="positive divisor"):
        partitioning.make_mesh(-1, 3)
    with pytest.raises(ValueError, match="!= 8 devices"):
        partitioning.make_mesh(2, 2)


def test_rules_presets():
    dp = dict(partitioning.get_rules("data_parallel"))
    assert dp["batch"] == "data" and dp["mlp"] is None and dp["embed"] is None
    mp = dict(partitioning.get_rules("model_parallel"))
    assert all(mp[a] == "model" for a in ("mlp", "heads", "vocab", "joined_kv")) and mp["embed"] is None
    fsdp = partitioning.get_rules("fsdp")
    assert dict(fsdp)["embed"] == "data"
    assert {name for name, _ in fsdp} == set(partitioning.LOGICAL_AXES)
    # Activations keep batch on `data`; embed is then replicated, not a duplicate use of `data`.
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), fsdp) == P("data", None, None)
    with pytest.raises(ValueError, match="unknown partitioning preset"):
        partitioning.get_rules("zero3")


@pytest.mark.parametrize("preset,expected", [
    ("data_parallel", {"token_embedder/embedding": P(None, None),
                       "encoder/layers_0/mlp/wi_0/kernel": P(None, None)}),
    ("model_parallel", {"token_embedder/embedding": P("model", None),
                        "encoder/layers_0/mlp/wi_0/kernel": P(None, "model"),
                        "encoder/layers_0/mlp/wo/kernel": P("model", None),
                        "decoder/layers_0/self_attention/out/kernel": P("model", None),
                        "decoder/logits_dense/kernel": P(None, "model"),
                        "encoder/relpos_bias/rel_embedding": P("model", None),
                        "encoder/encoder_norm/scale": P(None)}),
    ("fsdp", {"token_embedder/embedding": P("model", "data"),
              "encoder/layers_0/mlp/wi_0/kernel": P("data", "model"),
              "decoder/layers_0/encoder_decoder_attention/query/kernel": P("data", "model"),
              "decoder/decoder_norm/scale": P("data")}),
])
def test_param_shardings_follow_rules(preset, expected):
    mesh = partitioning.make_mesh(4, 2)
    abstract, shardings = partitioning.param_shardings(Transformer(CFG), mesh, partitioning.get_rules(preset),
                                                       *init_args())
    flat_shardings = {jax.tree_util.keystr(p, simple=True, separator="/"): s
                      for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
    for path, spec in expected.items():
        assert flat_shardings[path].spec == spec, path
    assert jax.tree.structure(abstract) == jax.tree.structure(shardings)


def test_sharded_init_places_and_matches_plain_init():
    mesh = partitioning.make_mesh(2, 4)
    params, shardings = partitioning.sharded_init(Transformer(CFG), mesh, partitioning.get_rules("fsdp"),
                                                  jax.random.key(0), *init_args())
    embedding = params["token_embedder"]["embedding"]  # [vocab, embed] -> P("model", "data")
    assert embedding.sharding.is_equivalent_to(NamedSharding(mesh, P("model", "data")), 2)
    assert embedding.addressable_shards[0].data.shape == (128 // 4, 64 // 2)
    for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    # Same values as a plain single-device init: sharding changes placement, not numbers.
    plain = nn.meta.unbox(jax.jit(Transformer(CFG).init)(jax.random.key(0), ENC, DEC_IN)["params"])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_scanned_params_get_a_replicated_layers_axis():
    cfg = CFG.replace(scan_layers=True, num_layers=2)
    mesh = partitioning.make_mesh(2, 4)
    abstract, shardings = partitioning.param_shardings(Transformer(cfg), mesh, partitioning.get_rules("fsdp"),
                                                       *init_args())
    assert shardings["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].spec == P(None, "data", "model")
    assert abstract["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (2, 64, 128)


def _loss_and_grads(params, enc, dec_in, tgt):
    def loss_fn(p):
        logits = Transformer(CFG).apply({"params": p}, enc, dec_in, tgt)
        return token_mean_cross_entropy(logits, tgt, (tgt > 0).astype(jnp.float32))[0]
    return jax.value_and_grad(loss_fn)(params)


@pytest.fixture(scope="module")
def single_device_reference():
    params = nn.meta.unbox(jax.jit(Transformer(CFG).init)(jax.random.key(0), ENC, DEC_IN)["params"])
    return jax.jit(_loss_and_grads)(params, ENC, DEC_IN, TGT)


@pytest.mark.parametrize("data,model,preset", [(8, 1, "data_parallel"), (4, 2, "model_parallel"), (2, 4, "fsdp")])
def test_loss_and_grads_identical_across_mesh_shapes(single_device_reference, data, model, preset):
    ref_loss, ref_grads = single_device_reference
    mesh = partitioning.make_mesh(data, model)
    rules = partitioning.get_rules(preset)
    params, shardings = partitioning.sharded_init(Transformer(CFG), mesh, rules, jax.random.key(0), *init_args())
    batch = partitioning.data_sharding(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        step = jax.jit(_loss_and_grads, in_shardings=(shardings, batch, batch, batch),
                       out_shardings=(partitioning.replicated(mesh), shardings))
        loss, grads = step(params, ENC, DEC_IN, TGT)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
    wo = grads["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
    assert wo.sharding.spec == shardings["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].spec


@pytest.mark.parametrize("factored", [False, True], ids=["adamw", "adafactor"])
def test_opt_state_shardings_follow_params(factored):
    mesh = partitioning.make_mesh(2, 4)
    rules = partitioning.get_rules("fsdp")
    params, shardings = partitioning.sharded_init(Transformer(CFG), mesh, rules, jax.random.key(0), *init_args())
    if factored:  # min_dim_size_to_factor=32 so the tiny kernels get factored (v_row / v_col) second moments.
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adafactor(1e-2, min_dim_size_to_factor=32))
    else:
        tx = optax.adamw(1e-3)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    state_shardings = partitioning.opt_state_shardings(abstract_state, abstract_params, shardings, mesh)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    # wi_0 is [64, 128] with spec P("data", "model"): full moments keep it, factored ones drop the reduced axis.
    expected = {(64, 128): P("data", "model"), (64,): P("data"), (128,): P("model"), (1,): P()}
    wi_leaves = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state)
                 if "'wi_0'" in jax.tree_util.keystr(p) and "'encoder'" in jax.tree_util.keystr(p)
                 and "'layers_0'" in jax.tree_util.keystr(p)]
    assert len(wi_leaves) >= 2
    for path, leaf in wi_leaves:
        assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, expected[leaf.shape]), leaf.ndim), path
    shapes = {leaf.shape for _, leaf in wi_leaves}
    assert shapes == ({(64,), (128,), (1,)} if factored else {(64, 128)}), shapes
    # Scalars (step counts) are replicated.
    assert all(x.sharding.spec == P() for x in jax.tree.leaves(state) if x.ndim == 0)
