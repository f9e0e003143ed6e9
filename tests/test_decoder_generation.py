"""Greedy and beam-search generations of our decoder-only students equal transformers' `generate` token for
token on six left-padded prompts of different lengths (token 0 inside them), one model per family."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import decoder_cases as cases  # noqa: E402
from sbs_jax.checkpoints import load_hf  # noqa: E402
from sbs_jax.model.decoder import DecoderLM, decoding  # noqa: E402

NEW = 12


# Llama in the default suite; the other families (each ~20 s of compiles here) in the slow one.
@pytest.fixture(scope="module", params=[pytest.param(c, marks=() if c == "llama3_scaled" else pytest.mark.slow)
                                        for c in cases.FAMILY_CASES])
def family(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    hf = cases.hf_model(request.param)
    hf.save_pretrained(directory)
    config, params = load_hf(directory)
    tokens, valid = decoding.left_pad(cases.prompts())
    eos = cases.ending_token(hf, tokens, valid, NEW)
    return request.param, hf, DecoderLM(config), params, tokens, valid, eos


def hf_generate(hf, tokens, valid, eos, **options):
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                          attention_mask=torch.tensor(valid, dtype=torch.long), max_new_tokens=NEW, do_sample=False,
                          eos_token_id=eos, pad_token_id=0, **options).numpy()[:, tokens.shape[1]:]
    out = np.pad(out, ((0, 0), (0, NEW - out.shape[1])))  # HF stops early once every row has ended
    # Our outputs hold 0 after EOS. HF's beam search fills with `pad_token_id or eos_token_id` (utils.py
    # `output_fill_value`), i.e. with EOS when the pad id is 0: compare up to and including the first EOS.
    after_eos = np.cumsum(out == eos, axis=1) - (out == eos) > 0
    return np.where(after_eos, 0, out)


def _ended_rows(out, eos):
    return int((out == eos).any(axis=1).sum())


def test_greedy_matches_generate(family):
    _, hf, model, params, tokens, valid, eos = family
    ref = hf_generate(hf, tokens, valid, eos)
    ours = np.asarray(decoding.greedy_decode(model, params, tokens, valid, max_new_tokens=NEW, eos_ids=(eos,)))
    assert 0 < _ended_rows(ref, eos) < len(ref)  # some rows stop early, some run to the limit
    np.testing.assert_array_equal(ours, ref)


def test_beam_search_matches_generate(family):
    _, hf, model, params, tokens, valid, eos = family
    ref = hf_generate(hf, tokens, valid, eos, num_beams=4)
    ours = np.asarray(decoding.beam_search(model, params, tokens, valid, max_new_tokens=NEW, num_beams=4,
                                           eos_ids=(eos,)))
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.slow
@pytest.mark.parametrize("length_penalty, early_stopping", [(0.6, False), (2.0, True), (1.0, "never")])
def test_beam_search_options_match_generate(family, length_penalty, early_stopping):
    _, hf, model, params, tokens, valid, eos = family
    ref = hf_generate(hf, tokens, valid, eos, num_beams=4, length_penalty=length_penalty,
                      early_stopping=early_stopping)
    ours = np.asarray(decoding.beam_search(model, params, tokens, valid, max_new_tokens=NEW, num_beams=4,
                                           eos_ids=(eos,), length_penalty=length_penalty,
                                           early_stopping=early_stopping))
    np.testing.assert_array_equal(ours, ref)
