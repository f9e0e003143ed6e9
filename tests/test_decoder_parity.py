"""Decoder-only students (Llama, Qwen2, Gemma 1/2/3) against transformers' PyTorch models with random weights.

transformers builds and saves each model; we import it with `load_hf` and compare float32 logits on a
left-padded batch (positions from the attention mask, as `generate` computes them) at 1e-4; we export back
with `save_hf` and transformers reloads it with identical logits; sharded checkpoints and bad directories.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import decoder_cases as cases  # noqa: E402
from sbs_jax.checkpoints import CheckpointError, detect_format, load_hf, load_pretrained, save_hf  # noqa: E402
from sbs_jax.model.decoder import DecoderConfig, DecoderLM, positions_from_mask  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(cases.CASES))
def pair(request, tmp_path_factory):
    """(case, transformers model, the directory it saved, our config and params as `load_hf` reads it)."""
    directory = tmp_path_factory.mktemp(request.param)
    hf = cases.hf_model(request.param)
    hf.save_pretrained(directory)
    config, params = load_hf(directory)
    return request.param, hf, directory, config, params


def hf_logits(hf, tokens, valid):
    positions = np.asarray(positions_from_mask(jnp.asarray(valid)))
    with torch.no_grad():
        return hf(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(valid, dtype=torch.long),
                  position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()


def our_logits(config, params, tokens, valid):
    positions = positions_from_mask(jnp.asarray(valid))
    return np.asarray(jax.jit(DecoderLM(config).apply)({"params": params}, tokens, valid, positions))


def test_config_read_from_config_json(pair):
    name, hf, _, config, _ = pair
    spec = cases.CASES[name]
    assert isinstance(config, DecoderConfig) and config.model_type == spec["model_type"]
    assert config.rope_theta == spec["rope_theta"]  # e.g. Qwen2's 1e6, not Qwen2Config's default 1e4
    assert config.tie_word_embeddings == hf.config.tie_word_embeddings
    assert config.sliding_layers == tuple(t == "sliding_attention" for t in getattr(hf.config, "layer_types", None)
                                          or ["full_attention"] * config.num_hidden_layers) or \
        not any(config.sliding_layers)
    if "rope_scaling" in spec:
        assert (config.rope_type, config.rope_factor) == (spec["rope_scaling"]["rope_type"],
                                                           spec["rope_scaling"]["factor"])


def test_logits_match_transformers_on_a_padded_batch(pair):
    _, hf, _, config, params = pair
    tokens, valid = cases.padded_batch()
    assert (tokens[valid] == 0).any(), "token 0 must occur as a real token"
    ref, ours = hf_logits(hf, tokens, valid), our_logits(config, params, tokens, valid)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name, change", [
    ("llama3_scaled", dict(rope_type="default")),                                # drop the llama3 scaling
    ("gemma2_capped", dict(attn_logit_softcapping=None)),                        # drop the attention soft-cap
    ("gemma2_capped", dict(final_logit_softcapping=None)),                       # drop the final soft-cap
    ("qwen2_sliding", dict(layer_types=(), sliding_window=None)),                # attend past the window
    ("gemma3", dict(rope_local_theta=1000000.0)),                                # one RoPE base for all layers
])
def test_each_family_feature_changes_the_logits(name, change, tmp_path):
    """The parity above would also pass for a feature that never changes anything: each must matter here."""
    cases.hf_model(name).save_pretrained(tmp_path)
    config, params = load_hf(tmp_path)
    tokens, valid = cases.padded_batch()
    exact = our_logits(config, params, tokens, valid)
    broken = our_logits(config.replace(**change), params, tokens, valid)
    assert np.abs(exact - broken)[valid].max() > 100 * TOL


def test_export_round_trip_through_transformers(pair, tmp_path):
    name, hf, _, config, params = pair
    save_hf(tmp_path, config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    tokens, valid = cases.padded_batch(seed=1)
    np.testing.assert_array_equal(hf_logits(reloaded, tokens, valid), hf_logits(hf, tokens, valid))
    config_again, params_again = load_hf(tmp_path)
    assert config_again == config
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_sharded_safetensors_with_index(tmp_path):
    model = cases.hf_model("llama3_scaled")
    model.save_pretrained(tmp_path / "whole")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert detect_format(tmp_path / "sharded") == "hf"
    config, params = load_pretrained(tmp_path / "sharded")  # the INITIAL_CHECKPOINT_PATH entry
    expected_config, expected = load_hf(tmp_path / "whole")
    assert config == expected_config
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def _edit(directory, config_edit=None, tensor_edit=None):
    from safetensors.numpy import load_file, save_file

    if config_edit:
        d = json.loads((directory / "config.json").read_text())
        config_edit(d)
        (directory / "config.json").write_text(json.dumps(d))
    if tensor_edit:
        tensors = load_file(directory / "model.safetensors")
        tensor_edit(tensors)
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("config_edit, tensor_edit, message", [
    (lambda d: d.update(model_type="mistral"), None, "model_type is 'mistral'; supported"),
    (lambda d: d.pop("rope_parameters", None) or d.pop("rope_theta", None), None, "no rope_theta"),
    (lambda d: d.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}), None,
     "rope_scaling type 'yarn' is not supported"),
    (None, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"),
     r"missing tensor model.layers.1.self_attn.k_proj.weight \(expected shape \(24, 48\)\)"),
    (None, lambda t: t.update({"model.layers.0.mlp.up_proj.weight": np.zeros((95, 48), np.float32)}),
     r"tensor model.layers.0.mlp.up_proj.weight has shape \(95, 48\), expected \(96, 48\)"),
    (None, lambda t: t.update({"model.layers.0.extra.weight": np.zeros((2,), np.float32)}),
     "unexpected tensor model.layers.0.extra.weight"),
])
def test_bad_directories_get_one_error_naming_the_problem(tmp_path, config_edit, tensor_edit, message):
    cases.hf_model("llama3_scaled").save_pretrained(tmp_path)
    _edit(tmp_path, config_edit, tensor_edit)
    with pytest.raises(CheckpointError, match=message):
        load_hf(tmp_path)


def test_sbs_convert_from_hf_accepts_decoder_models(tmp_path, capsys):
    from sbs_jax.commands import convert

    cases.hf_model("gemma").save_pretrained(tmp_path / "in")
    assert convert.main(["--from", "hf", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    assert "gemma, hidden=64, layers=2" in capsys.readouterr().out
    (config, params), (expected_config, expected) = load_hf(tmp_path / "out"), load_hf(tmp_path / "in")
    assert config == expected_config
    jax.tree.map(np.testing.assert_array_equal, params, expected)
