"""Explicit matmul FLOP count of a T5 encoder-decoder, per stream and per paired training step.

Counted: every matmul the model runs, at 2 FLOPs per multiply-add, on the padded shapes it is run on:
Q/K/V/out projections, attention scores (QK^T) and values (AV) over the full key length (the causal decoder
and padding are masked, not skipped, in both implementations), cross-attention K/V projections over the
encoder tokens, the feed-forward (two input kernels when gated, v1.1), and the output projection.
Not counted: embedding gathers, relative-position bias gathers, norms, softmax, activations, the loss and the
optimizer (all elementwise; tests/test_bench_flops.py bounds what they add on top).

Training = 3 x forward: the backward pass of a matmul takes two matmuls of the same size (gradient with
respect to each operand); the embedding gradient is needed, so even the first layer's input gradient is real.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class StreamFlops:
    """Forward matmul FLOPs of one stream (batch of examples through encoder and decoder)."""
    encoder: int
    decoder: int
    logits: int

    @property
    def forward(self) -> int:
        return self.encoder + self.decoder + self.logits

    @property
    def train(self) -> int:
        return 3 * self.forward


def _dims(config) -> tuple[int, int, int, int, int, int, int]:
    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    n_enc = config.num_layers
    n_dec = config.num_decoder_layers if config.num_decoder_layers is not None else config.num_layers
    n_wi = 2 if config.feed_forward_proj.startswith("gated") else 1
    return d, inner, ff, n_enc, n_dec, n_wi, config.vocab_size


def encoder_layer_flops(config, batch: int, enc_len: int) -> int:
    d, inner, ff, _, _, n_wi, _ = _dims(config)
    tokens = batch * enc_len
    proj = 2 * tokens * d * inner * 4                       # q, k, v, out
    attn = 2 * batch * enc_len * enc_len * inner * 2        # scores and weighted values
    mlp = 2 * tokens * d * ff * (n_wi + 1)                  # wi (x2 if gated) and wo
    return proj + attn + mlp


def decoder_layer_flops(config, batch: int, enc_len: int, dec_len: int) -> int:
    d, inner, ff, _, _, n_wi, _ = _dims(config)
    dec_tokens, enc_tokens = batch * dec_len, batch * enc_len
    self_attn = 2 * dec_tokens * d * inner * 4 + 2 * batch * dec_len * dec_len * inner * 2
    cross_attn = (2 * dec_tokens * d * inner * 2            # q and out on decoder tokens
                  + 2 * enc_tokens * d * inner * 2          # k and v on encoder tokens
                  + 2 * batch * dec_len * enc_len * inner * 2)
    mlp = 2 * dec_tokens * d * ff * (n_wi + 1)
    return self_attn + cross_attn + mlp


def stream_flops(config, batch: int, enc_len: int, dec_len: int) -> StreamFlops:
    """Forward matmul FLOPs of `batch` examples with padded encoder/decoder lengths."""
    d, _, _, n_enc, n_dec, _, vocab = _dims(config)
    return StreamFlops(
        encoder=n_enc * encoder_layer_flops(config, batch, enc_len),
        decoder=n_dec * decoder_layer_flops(config, batch, enc_len, dec_len),
        logits=2 * batch * dec_len * d * vocab,
    )


def paired_step_flops(config, batch: int, inputs: int, targets: int, rationales: int) -> int:
    """Model FLOPs of one distilling-step-by-step training step: label and rationale streams, fwd+bwd.

    Both streams encode the same example (with a different prefix), so the encoder runs once per stream. This
    is the useful work of a step whichever way an implementation schedules it (two passes or one fused pass),
    so it is the numerator of MFU for the reference and for ours alike.
    """
    return (stream_flops(config, batch, inputs, targets).train
            + stream_flops(config, batch, inputs, rationales).train)


def packed_step_flops(config, rows: int, enc_len: int, dec_len: int) -> int:
    """Matmul FLOPs a packed training step executes (fwd+bwd): one pass over `rows` rows of `enc_len` encoder
    and `dec_len` decoder tokens, padding included, attention over the whole row (segments are masked from
    each other, not skipped). What the compiled program runs; `tests/test_bench_flops.py` checks it against
    the lowered program's matmuls."""
    return stream_flops(config, rows, enc_len, dec_len).train


def segment_model_flops(config, segments) -> int:
    """Model FLOPs of packed (encoder length, decoder length) segments, the numerator of a packed step's MFU:
    each segment counted as if it ran alone, unpadded, fwd+bwd: projections, FFN and logits on its real tokens
    only, attention only among its own tokens. Padding and the cross-segment attention that packing masks
    (real work of the packed step, see `packed_step_flops`) are not credited."""
    return sum(stream_flops(config, 1, enc, dec).train for enc, dec in segments)


def greedy_decode_flops(config, batch: int, enc_len: int, steps: int) -> int:
    """Matmul FLOPs of KV-cached greedy decoding: one encoder pass, then `steps` one-token decoder steps.

    Step t attends over t+1 cached self-attention keys and all encoder keys; cross-attention K/V are projected
    once. Counted on the full `steps` (what a fixed-length decode runs when no early stop happens).
    """
    d, inner, ff, n_enc, n_dec, n_wi, vocab = _dims(config)
    enc = n_enc * encoder_layer_flops(config, batch, enc_len)
    cross_kv = n_dec * 2 * batch * enc_len * d * inner * 2
    per_token = 0
    for t in range(steps):
        per_token += n_dec * (2 * batch * d * inner * 4                 # self q, k, v, out
                              + 2 * batch * (t + 1) * inner * 2          # self scores + values
                              + 2 * batch * d * inner * 2                # cross q, out
                              + 2 * batch * enc_len * inner * 2          # cross scores + values
                              + 2 * batch * d * ff * (n_wi + 1))
        per_token += 2 * batch * d * vocab
    return enc + cross_kv + per_token


def mfu(flops_per_step: float, step_seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
    if peak_flops <= 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops}")
    return flops_per_step / step_seconds / peak_flops
