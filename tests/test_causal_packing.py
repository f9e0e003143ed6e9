"""Packed causal rows: segments with restarted positions and segment-masked attention give the per-stream losses
(and gradients) of the unpacked rows, for every format."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causal_cases import BOS, EOS, FEATURE_LENGTHS, MARK, SRC_EOS, random_examples
from sbs_jax.data import schema
from sbs_jax.data.input_pipeline import causal_lm
from sbs_jax.model.decoder import DecoderConfig, DecoderLM
from sbs_jax.train import causal_objective
from sbs_jax.train.objective import ObjectiveConfig


def test_packed_layout():
    layout = causal_lm.CausalLayout("multitask", eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS)
    examples = random_examples(5, n=3)
    rows = causal_lm.packed_rows(examples, layout, paired=True, row_length=24)[schema.PACKED]
    unpacked = causal_lm.causal_rows(examples, layout, paired=True, lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    # Every sequence appears once, in order, as a segment whose positions restart at 0; the rationale sequence
    # of the unparsed teacher output (example 2) has no weighted target and is left out, as T5 packing does.
    segments = []
    for r in range(rows["decoder_tokens"].shape[0]):
        for s in range(1, rows["decoder_segment_ids"][r].max() + 1):
            mask = rows["decoder_segment_ids"][r] == s
            assert rows["decoder_positions"][r][mask].tolist() == list(range(mask.sum()))
            segments.append(rows["decoder_tokens"][r][mask].tolist())
    expected = []
    for i in range(3):
        for key in ("label", "rationale") if i != 2 else ("label",):
            valid = unpacked[key]["decoder_valid"][i] > 0
            expected.append(unpacked[key]["decoder_tokens"][i][valid].tolist())
    assert segments == expected
    assert rows["decoder_tokens"].shape[0] < 6  # segments share rows
    with pytest.raises(ValueError, match="packed rows hold 5"):
        causal_lm.packed_rows(examples, layout, paired=True, row_length=5)


@pytest.mark.parametrize("fmt,grads", [("multitask", False), pytest.param("multitask", True, marks=pytest.mark.slow),
                                       pytest.param("rationale_first", True, marks=pytest.mark.slow)])
def test_packed_loss_and_grads_equal_unpacked(fmt, grads):
    config = DecoderConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_ids=(EOS,), dtype="float32")
    model = DecoderLM(config)
    params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    layout = causal_lm.CausalLayout(fmt, eos_id=EOS, bos_id=BOS, source_eos_id=SRC_EOS,
                                    marker=MARK if fmt != "multitask" else ())
    examples = random_examples(7, n=6)
    unpacked = causal_lm.causal_rows(examples, layout, paired=True, lengths=layout.row_lengths(FEATURE_LENGTHS, True))
    packed = causal_lm.packed_rows(examples, layout, paired=True, row_length=40)
    assert packed[schema.PACKED]["decoder_segment_ids"].max() > 1
    objective = ObjectiveConfig(rationale_weight=0.6)

    def loss(p, batch):
        return causal_objective.loss_fn(model, p, batch, None, objective)

    if grads:
        (l_u, m_u), g_u = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, unpacked)
        (l_p, m_p), g_p = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, packed)
        for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_u)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    else:
        l_u, m_u = jax.jit(loss)(params, unpacked)
        l_p, m_p = jax.jit(loss)(params, packed)
    for k in ("label/loss", "rationale/loss", "label/num_tokens", "rationale/num_tokens", "num_examples"):
        np.testing.assert_allclose(m_p[k], m_u[k], rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(l_p, l_u, rtol=1e-5)
