"""Checkpoint import/export: T5X (file, directory form, scanned), HF variants, error cases, `sbs convert`."""
import json
import pathlib
import shutil

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import serialization

from sbs_jax import cli
from sbs_jax.checkpoints import CheckpointError, detect_format, load_hf, load_pretrained, load_t5x, save_hf
from sbs_jax.commands import convert as convert_cmd
from sbs_jax.checkpoints.layout import flatten
from sbs_jax.model import Transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _raw_target(path) -> dict:
    return flatten(serialization.msgpack_restore(pathlib.Path(path).read_bytes())["optimizer"]["target"])


def _padded_batch(vocab, seed=0, batch=4, in_len=7, tgt_len=5):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, vocab, (batch, in_len)).astype(np.int32)
    targets = rng.integers(2, vocab, (batch, tgt_len)).astype(np.int32)
    inputs[0, 4:], targets[1, 3:] = 0, 0  # padding in both
    return inputs, targets


def _our_logits(config, params, inputs, targets):
    decoder_inputs = np.concatenate([np.zeros((len(targets), 1), np.int32), targets[:, :-1]], axis=1)
    return np.asarray(jax.jit(Transformer(config.replace(dtype="float32")).apply)(
        {"params": params}, jnp.asarray(inputs), jnp.asarray(decoder_inputs), jnp.asarray(targets)))


def _hf_logits(directory, inputs, targets):
    hf = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
    decoder_inputs = np.concatenate([np.zeros((len(targets), 1), np.int64), targets[:, :-1]], axis=1)
    with torch.no_grad():
        return hf(input_ids=torch.tensor(inputs, dtype=torch.long),
                  attention_mask=torch.tensor(inputs != 0, dtype=torch.long),
                  decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long)).logits.numpy()


def _assert_same_params(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# ------------------------------------------------------------------------------------------------ T5X
def test_t5x_tiny_imports_with_inferred_config(t5x_tiny_checkpoint):
    config, params = load_t5x(t5x_tiny_checkpoint)
    assert (config.vocab_size, config.d_model, config.num_heads, config.d_kv, config.d_ff) == (32128, 8, 4, 3, 16)
    assert (config.num_layers, config.decoder_layers) == (2, 2)
    assert config.feed_forward_proj == "gated-gelu" and not config.tie_word_embeddings
    raw, flat = _raw_target(t5x_tiny_checkpoint), flatten(params)
    assert raw.keys() == flat.keys() and len(flat) == 52
    for name in ("token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
                 "decoder/layers_1/encoder_decoder_attention/out/kernel", "decoder/logits_dense/kernel"):
        assert flat[name].shape == raw[name].shape
        np.testing.assert_array_equal(flat[name], raw[name])
    assert flat["encoder/layers_0/attention/query/kernel"].shape == (8, 12)


def test_t5x_tiny_exported_to_hf_gives_same_logits(t5x_tiny_checkpoint, tmp_path):
    config, params = load_t5x(t5x_tiny_checkpoint)
    save_hf(tmp_path, config, params)
    inputs, targets = _padded_batch(config.vocab_size)
    ours, ref = _our_logits(config, params, inputs, targets), _hf_logits(tmp_path, inputs, targets)
    real = targets != 0
    assert np.abs(ours[real] - ref[real]).max() <= 1e-4
    assert np.abs(ref[real]).std() > 1e-3  # non-trivial logits


def _write_t5x_directory(step_dir: pathlib.Path, target: dict, bf16_names=()):
    """A T5X directory-form checkpoint: 2-D+ arrays in zarr folders (TensorStore), the rest inline."""
    import tensorstore as ts

    step_dir.mkdir(parents=True)

    def spec_for(name, value):
        ts_name = "target." + name.replace("/", ".")
        dtype = "bfloat16" if name in bf16_names else "float32"
        spec = {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": "file", "path": ts_name},
                "metadata": {"compressor": {"id": "gzip"}, "shape": list(value.shape), "chunks": list(value.shape)}}
        absolute = json.loads(json.dumps(spec))
        absolute["kvstore"]["path"] = str(step_dir / ts_name)
        stored = value.astype(jnp.bfloat16) if dtype == "bfloat16" else value
        ts.open(absolute, create=True, open=True).result().write(stored).result()
        return spec

    written = {}
    for name, value in flatten(target).items():
        written[name] = spec_for(name, value) if value.ndim >= 2 else value
    nested = {}
    for name, value in written.items():
        node = nested
        for part in name.split("/")[:-1]:
            node = node.setdefault(part, {})
        node[name.split("/")[-1]] = value
    # Optimizer state placeholders pointing nowhere: importing params must never read them.
    state = {"step": np.int32(10), "param_states": {"big": {"driver": "zarr", "kvstore": {"driver": "file",
                                                                                          "path": "state.absent"}}}}
    (step_dir / "checkpoint").write_bytes(
        serialization.msgpack_serialize({"version": 3, "optimizer": {"target": nested, "state": state}}))


def test_t5x_directory_form_with_tensorstore(t5x_tiny_checkpoint, tmp_path):
    config, params = load_t5x(t5x_tiny_checkpoint)
    bf16 = "decoder/logits_dense/kernel"
    _write_t5x_directory(tmp_path / "run" / "checkpoint_10", params, bf16_names=(bf16,))
    assert (tmp_path / "run" / "checkpoint_10" / "target.encoder.layers_0.attention.key.kernel").is_dir()
    for path in (tmp_path / "run" / "checkpoint_10", tmp_path / "run" / "checkpoint_10" / "checkpoint",
                 tmp_path / "run"):
        config2, params2 = load_t5x(path)
        assert config2 == config
        flat, flat2 = flatten(params), flatten(params2)
        for k in flat:
            if k == bf16:  # stored as bfloat16: equal to the rounded values
                expected = flat[k].astype(jnp.bfloat16).astype(np.float32)
                np.testing.assert_array_equal(flat2[k], expected)
                assert not np.array_equal(flat2[k], flat[k])
            else:
                np.testing.assert_array_equal(flat2[k], flat[k], err_msg=k)
    assert detect_format(tmp_path / "run" / "checkpoint_10") == "t5x"


def test_t5x_scanned_layout_is_unstacked(t5x_tiny_checkpoint, tmp_path):
    config, params = load_t5x(t5x_tiny_checkpoint)
    scanned = {"token_embedder": params["token_embedder"]}
    for stack in ("encoder", "decoder"):
        layers = {k: v for k, v in params[stack].items() if k.startswith("layers_")}
        stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *[layers[f"layers_{i}"] for i in range(2)])
        scanned[stack] = {k: v for k, v in params[stack].items() if not k.startswith("layers_")}
        scanned[stack]["layers"] = stacked  # T5X's param_scan_axis=1
    path = tmp_path / "scanned.msgpack"
    path.write_bytes(serialization.msgpack_serialize({"version": 3, "optimizer": {"target": scanned}}))
    config2, params2 = load_t5x(path)
    assert config2 == config
    _assert_same_params(params2, params)


# ------------------------------------------------------------------------------------------------ HF
def _tiny_hf(directory, *, tie=True, untie=False, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                dropout_rate=0.0, feed_forward_proj="relu" if tie else "gated-gelu",
                                tie_word_embeddings=tie, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if untie:
        model.lm_head.weight = torch.nn.Parameter(torch.randn(40, 16))
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_v10")
    _tiny_hf(directory)
    return directory


def test_pytorch_bin_and_sharded_safetensors_load_like_safetensors(hf_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    config, params = load_hf(hf_dir)
    bin_dir, sharded_dir = tmp_path / "bin", tmp_path / "sharded"
    bin_dir.mkdir(), sharded_dir.mkdir()
    tensors = load_file(str(hf_dir / "model.safetensors"))
    for d in (bin_dir, sharded_dir):
        shutil.copy(hf_dir / "config.json", d)
    torch.save({k: torch.tensor(v) for k, v in tensors.items()}, bin_dir / "pytorch_model.bin")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(sharded_dir / shard), metadata={"format": "pt"})
    (sharded_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}))
    for d in (bin_dir, sharded_dir):
        config2, params2 = load_hf(d)
        assert config2 == config
        _assert_same_params(params2, params)


def test_transformers5_tied_but_unscaled_model_becomes_untied(tmp_path):
    """`tie_word_embeddings=False` alone in transformers 5.x: head == embedding, no scaling (stack.md §8)."""
    _tiny_hf(tmp_path, tie=False, untie=False)
    config, params = load_hf(tmp_path)
    assert not config.tie_word_embeddings
    np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"],
                                  params["token_embedder"]["embedding"].T)
    inputs, targets = _padded_batch(40)
    real = targets != 0
    assert np.abs(_our_logits(config, params, inputs, targets)[real]
                  - _hf_logits(tmp_path, inputs, targets)[real]).max() <= 1e-4


def test_bfloat16_export_loads_in_transformers_and_back(hf_dir, tmp_path):
    config, params = load_hf(hf_dir)
    save_hf(tmp_path, config, params, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert hf.shared.weight.dtype == torch.bfloat16
    _, params2 = load_hf(tmp_path)
    emb = params["token_embedder"]["embedding"]
    np.testing.assert_array_equal(params2["token_embedder"]["embedding"],
                                  emb.astype(jnp.bfloat16).astype(np.float32))


def test_save_hf_writes_tokenizer_and_generation_config(hf_dir, tmp_path):
    config, params = load_hf(hf_dir)
    spm = tmp_path / "vocab.model"
    spm.write_bytes(b"sentencepiece-bytes")
    out = save_hf(tmp_path / "out", config, params, spiece_model=spm)
    assert (out / "spiece.model").read_bytes() == b"sentencepiece-bytes"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}


# ------------------------------------------------------------------------------------------------ errors
def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite_tensors(directory, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_is_named(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    name = "decoder.block.1.layer.1.EncDecAttention.k.weight"
    _rewrite_tensors(d, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor {name} \(expected shape \(16, 16\)\)"):
        load_hf(d)


def test_wrong_shape_names_tensor_expected_and_found(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    name = "encoder.block.0.layer.1.DenseReluDense.wi.weight"
    _rewrite_tensors(d, lambda t: t.__setitem__(name, np.zeros((31, 16), np.float32)))
    with pytest.raises(CheckpointError, match=rf"tensor {name} has shape \(31, 16\), expected \(32, 16\)"):
        load_hf(d)


def test_unexpected_extra_tensor_is_rejected(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    extra = "encoder.block.2.layer.0.layer_norm.weight"
    _rewrite_tensors(d, lambda t: t.__setitem__(extra, np.ones(16, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor encoder\.block\.2\.layer\.0\.layer_norm\.weight"):
        load_hf(d)


def test_config_json_missing_or_invalid(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "d_model": "sixteen"}))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'd_model' must be a positive integer, found 'six"):
        load_hf(d)
    (d / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON at line 1"):
        load_hf(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_hf(d)


def test_unrecognised_layouts(tmp_path, hf_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_pretrained(tmp_path / "absent")
    no_weights = _copy(hf_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found; expected one of model.safetensors"):
        load_hf(no_weights)
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\xc1\xc1 definitely not msgpack")
    with pytest.raises(CheckpointError, match="not a T5X msgpack checkpoint"):
        load_pretrained(garbage)
    wrong_tree = tmp_path / "tree.msgpack"
    wrong_tree.write_bytes(serialization.msgpack_serialize({"params": {"w": np.zeros(2, np.float32)}}))
    with pytest.raises(CheckpointError, match=r"expected T5X contents .* found \['params'\]"):
        load_t5x(wrong_tree)


def test_t5x_directory_with_missing_array_folder(t5x_tiny_checkpoint, tmp_path):
    _, params = load_t5x(t5x_tiny_checkpoint)
    step = tmp_path / "checkpoint_3"
    _write_t5x_directory(step, params)
    shutil.rmtree(step / "target.decoder.layers_1.mlp.wo.kernel")
    with pytest.raises(CheckpointError, match="decoder/layers_1/mlp/wo/kernel refers to target.decoder.layers_1.mlp"):
        load_t5x(step)


def test_t5x_given_config_that_does_not_match(t5x_tiny_checkpoint):
    config, _ = load_t5x(t5x_tiny_checkpoint)
    with pytest.raises(CheckpointError, match=r"layers_0/mlp/wo/kernel has shape \(16, 8\), expected \(32, 8\)"):
        load_t5x(t5x_tiny_checkpoint, config.replace(d_ff=32))


def test_detect_format_sees_training_runs(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "100").mkdir(parents=True)
    (run / "model_config.json").write_text("{}")
    assert detect_format(run) == "sbs" and detect_format(run / "checkpoints" / "100") == "sbs"


# ------------------------------------------------------------------------------------------------ CLI
def test_convert_cli_hf_and_t5x(hf_dir, t5x_tiny_checkpoint, tmp_path, capsys):
    assert cli.main(["convert", "--from", "hf", "--input", str(hf_dir), "--output", str(tmp_path / "a")]) == 0
    config, params = load_hf(hf_dir)
    config_a, params_a = load_pretrained(tmp_path / "a")
    assert config_a == config
    _assert_same_params(params_a, params)

    out = tmp_path / "b"
    assert convert_cmd.main(["--from", "t5x", "--input", str(t5x_tiny_checkpoint), "--output", str(out),
                         "--dtype", "bfloat16"]) == 0
    assert "converted t5x" in capsys.readouterr().out
    hf = transformers.T5ForConditionalGeneration.from_pretrained(out)
    assert hf.lm_head.weight.data_ptr() != hf.shared.weight.data_ptr() and hf.config.d_model == 8

    # Bad input: clear message, exit code 2; a non-empty output is not overwritten.
    assert convert_cmd.main(["--from", "hf", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "c")]) == 2
    assert "nope: not a directory" in capsys.readouterr().err
    assert convert_cmd.main(["--from", "t5x", "--input", str(hf_dir), "--output", str(tmp_path / "c")]) == 2
    assert "not a T5X checkpoint" in capsys.readouterr().err
    assert convert_cmd.main(["--from", "hf", "--input", str(hf_dir), "--output", str(out)]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    assert convert_cmd.main(["--from", "onnx", "--input", str(hf_dir), "--output", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
