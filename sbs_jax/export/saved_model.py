"""TF SavedModel for TF Serving: strings in, strings out, tokenisation and decoding inside the graph.

The decode function is converted with jax2tf native serialization (a StableHLO module inside an XlaCallModule
op) with a symbolic batch dimension; parameters are TF variables, so the graph stays small. Tokenisation uses
`tensorflow_text.SentencepieceTokenizer` built from the SentencePiece model bytes, so whoever loads the
SavedModel in Python must `import tensorflow_text` first (it registers the SentencePiece ops); TF Serving needs
a build with the tensorflow-text ops (the `tensorflow/serving` images ship them).

Signature `serving_default`: `inputs` tf.string [batch] -> `label` tf.string [batch] (and `rationale`).
"""
from __future__ import annotations

from typing import Sequence

from etils import epath

from sbs_jax.data.vocab import eos_marker
from sbs_jax.export.serving import ServingSpec, cast_params, make_decode_fn, write_spec

DEFAULT_PLATFORMS = ("cpu",)


def _make_module(config, params, spm_bytes: bytes, spec: ServingSpec, platforms: Sequence[str]):
    import sentencepiece as spm
    import tensorflow as tf
    import tensorflow_text as tf_text
    from jax.experimental import jax2tf

    eos, pad, length = config.eos_id, config.pad_id, spec.max_input_length
    sp = spm.SentencePieceProcessor(model_proto=spm_bytes)
    piece_size, unk = sp.GetPieceSize(), sp.unk_id()
    converted = {
        stream: jax2tf.convert(make_decode_fn(config, spec, stream), polymorphic_shapes=[None, "(b, _)"],
                               with_gradient=False, native_serialization_platforms=tuple(platforms))
        for stream in spec.outputs
    }

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__(name="sbs_student")
            self.params = tf.nest.map_structure(lambda p: tf.Variable(p, trainable=False), params)
            self.tokenizer = tf_text.SentencepieceTokenizer(model=spm_bytes, out_type=tf.int32)

        def encode(self, texts, prefix: str):  # [batch] strings -> [batch, length] int32
            ids = eos_marker.encode_tf(self.tokenizer.tokenize, tf.strings.join([prefix, texts]),
                                       eos_id=eos)[:, : length - 1]
            eos_column = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(texts)[0], 1], eos))
            ids = tf.concat([ids, eos_column], axis=1)
            return ids.to_tensor(default_value=pad, shape=[None, length])

        def detokenize(self, tokens):  # [batch, decode_length] int32 -> [batch] strings
            tokens = tf.where(tokens < piece_size, tokens, unk)  # ids past the vocabulary read as unknown
            after_eos = tf.cumsum(tf.cast(tokens == eos, tf.int32), axis=-1, exclusive=True) > 0
            return self.tokenizer.detokenize(tf.where(after_eos, pad, tokens))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")], autograph=False)
        def serve(self, inputs):
            outputs = {}
            for stream, fn in converted.items():
                tokens = fn(self.params, self.encode(inputs, spec.prefix(stream)))
                outputs[stream] = self.detokenize(tokens)
            return outputs

    return ServingModule()


def export_saved_model(output_dir, config, params, *, spm_model, spec: ServingSpec, dtype: str = "float32",
                       platforms: Sequence[str] = DEFAULT_PLATFORMS) -> epath.Path:
    """Write a SavedModel with a `serving_default` signature to `output_dir`.

    `spm_model`: path to the student's SentencePiece model. `dtype`: storage dtype of the exported weights;
    the computation runs in `config.dtype`, as in training and `sbs infer`. `platforms`: where the converted computation may run ("cpu", "cuda", "tpu").
    """
    import tensorflow as tf

    output_dir = epath.Path(output_dir)  # tf.saved_model writes gs:// itself
    spm_bytes = epath.Path(spm_model).read_bytes()
    config = config.replace(dropout_rate=0.0)
    module = _make_module(config, cast_params(params, dtype), spm_bytes, spec, platforms)
    signature = module.serve.get_concrete_function()
    tf.saved_model.save(module, str(output_dir), signatures={"serving_default": signature})
    # assets.extra/ is TF Serving's place for files it ignores but ships with the model.
    extra = output_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    write_spec(extra, spec, config, dtype)
    return output_dir

