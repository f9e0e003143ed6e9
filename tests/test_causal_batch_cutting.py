"""Length-bucket cutting of causal rows (decoder-only students, `TrainConfig.cut_batches`): a cut batch has the
full-length batch's loss and metrics (label_first; multitask with gradients, slow), and every cut shape is one
`aot.train_shapes` compiles (multitask, label_first)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_cases import BOS, EOS, FEATURE_LENGTHS, MARK, SRC_EOS, random_examples
from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm
from sbs_jax.model.decoder import DecoderConfig, DecoderLM
from sbs_jax.train import aot, batch_cutting, causal_objective, trainer
from sbs_jax.train.objective import ObjectiveConfig

CONFIG = DecoderConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_ids=(EOS,), bos_id=BOS,
                       dtype="float32")
# Three times the lengths the examples need, so the rows carry padding to cut.
PADDED = {k: 3 * v for k, v in FEATURE_LENGTHS.items()}


def _layout(fmt):
    return causal_lm.CausalLayout(fmt, eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS,
                                  marker=MARK if fmt != "multitask" else ())


@pytest.mark.parametrize("fmt,grads", [("label_first", False),  # gradients: ~7 s more; the trainer test
                                      pytest.param("multitask", True, marks=pytest.mark.slow)])  # checks them per step
def test_cut_causal_batch_has_the_full_batch_loss_and_gradients(fmt, grads):
    layout = _layout(fmt)
    full = causal_lm.causal_rows(random_examples(11, n=6), layout, paired=True,
                                 lengths=layout.row_lengths(PADDED, True))
    cut = batch_cutting.BatchCutter(min_length=4, step=2)(full)
    for key in layout.groups(True):
        assert cut[key][schema.DECODER_TOKENS].shape[1] < full[key][schema.DECODER_TOKENS].shape[1] / 2
        for k, v in full[key].items():  # only padding went
            assert not v[:, cut[key][k].shape[1]:].any(), f"{key}/{k}"
    model = DecoderLM(CONFIG)
    params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    objective = ObjectiveConfig(rationale_weight=0.7)

    def run(batch):
        fn = lambda p: causal_objective.loss_fn(model, p, batch, None, objective)  # noqa: E731
        if not grads:
            return jax.jit(fn)(params), params
        return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)
    (loss_f, m_f), g_f = run(full)
    (loss_c, m_c), g_c = run(cut)
    np.testing.assert_allclose(float(loss_c), float(loss_f), rtol=1e-5)
    for k in ("label/loss", "rationale/loss", "label/accuracy", "label/num_tokens", "rationale/num_tokens",
              "num_examples"):
        np.testing.assert_allclose(float(m_c[k]), float(m_f[k]), rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_f)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fmt", ["multitask", "label_first"])
def test_bucket_shapes_cover_every_causal_batch_the_cutter_makes(fmt):
    layout = _layout(fmt)
    config = trainer.TrainConfig(model_dir="/tmp/unused", mixture_or_task_name="unused", task_feature_lengths=PADDED,
                                 train_steps=1, batch_size=8, model=CONFIG, causal_format=fmt, cut_batches=True,
                                 min_bucket_length=4, bucket_step=2)
    shapes, count = aot.train_shapes(config, layout=layout)
    full = layout.row_lengths(PADDED, True)
    ladders = [batch_cutting.train_bucket_lengths(n, 4, 2) for n in full.values()]
    assert count == len(shapes) == int(np.prod([len(x) for x in ladders])) > 1
    assert shapes[0] == {k: {f: (8, n) for f in schema.CAUSAL_KEYS} for k, n in full.items()}  # largest first
    keys = {batch_cutting.shape_key(jax.tree.map(lambda s: np.zeros(s, np.int32), sh,
                                                 is_leaf=lambda x: isinstance(x, tuple))) for sh in shapes}
    cutter = batch_cutting.BatchCutter(config.min_bucket_length, config.bucket_step)
    seen = set()
    for seed in range(40):
        batch = causal_lm.causal_rows(random_examples(seed, n=8), layout, paired=True, lengths=full)
        key = batch_cutting.shape_key(cutter(batch))
        assert key in keys
        seen.add(key)
    assert len(seen) > 1
