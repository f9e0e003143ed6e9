"""The benchmark's FLOP counter against a hand count, the traced program's matmuls and XLA's cost analysis;
and the harness's output structure on a tiny config (no timing is asserted anywhere)."""
import json
import math
import re
import types

import jax
import jax.numpy as jnp
import pytest

from bench import flops
from bench.shapes import CQA_MEASURED, SHAPES, BenchShape

# stablehlo.dot_general %a, %b, ..., contracting_dims = [i, ...] x [...] ... : (tensor<AxBxf32>, ...) -> tensor<...>
_DOT = re.compile(r"stablehlo\.dot_general.*?contracting_dims = \[([\d, ]*)\] x .*?"
                  r": \(tensor<([^>]*)>, tensor<[^>]*>\) -> tensor<([^>]*)>")


def _dims(type_text: str) -> list[int]:
    return [int(x) for x in type_text.split("x")[:-1]]


def hlo_matmul_flops(stablehlo_text: str) -> int:
    """2 x (output elements) x (contracted size), summed over every dot_general of an unrolled program."""
    total = 0
    for line in stablehlo_text.splitlines():
        if "dot_general" not in line:
            continue
        match = _DOT.search(line)
        assert match, f"unparsed dot_general: {line}"
        lhs, out = _dims(match.group(2)), _dims(match.group(3))
        total += 2 * math.prod(out) * math.prod(lhs[int(c)] for c in match.group(1).split(","))
    return total


def test_counts_a_tiny_config_by_hand():
    # One layer each, d_model 8, 2 heads x d_kv 2 (inner 4), gated d_ff 16, vocab 10; batch 1, 3 inputs, 2 targets.
    cfg = types.SimpleNamespace(d_model=8, d_kv=2, num_heads=2, d_ff=16, num_layers=1, num_decoder_layers=None,
                                vocab_size=10, feed_forward_proj="gated-gelu")
    # Encoder, in multiply-adds: q,k,v,out 4 x (3 tok x 8 x 4) = 384; QK^T 3x3x4 = 36 and AV 36;
    # wi_0, wi_1, wo 3 x (3 x 8 x 16) = 1152.  Sum 1608 MACs.
    encoder = 2 * (384 + 36 + 36 + 1152)
    # Decoder: self q,k,v,out 4 x (2 x 8 x 4) = 256; self QK^T, AV 2 x (2x2x4) = 32; cross q,out 2 x 64 = 128;
    # cross k,v on the 3 encoder tokens 2 x 96 = 192; cross QK^T, AV 2 x (2x3x4) = 48; mlp 3 x (2x8x16) = 768.
    decoder = 2 * (256 + 32 + 128 + 192 + 48 + 768)
    logits = 2 * (2 * 8 * 10)
    got = flops.stream_flops(cfg, batch=1, enc_len=3, dec_len=2)
    assert (got.encoder, got.decoder, got.logits) == (encoder, decoder, logits) == (3216, 2848, 320)
    assert got.train == 3 * 6384
    # Ungated (v1.0) has one input kernel: 3 x 8 x 16 fewer MACs in the encoder, 2 x 8 x 16 in the decoder.
    relu = flops.stream_flops(types.SimpleNamespace(**{**vars(cfg), "feed_forward_proj": "relu"}), 1, 3, 2)
    assert got.forward - relu.forward == 2 * (3 * 8 * 16 + 2 * 8 * 16)
    # A paired step is the label stream plus the rationale stream, both encoding the same inputs.
    assert flops.paired_step_flops(cfg, 1, 3, 2, 5) == got.train + flops.stream_flops(cfg, 1, 3, 5).train
    assert flops.mfu(1e12, 0.5, 4e12) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny_programs():
    from sbs_jax.model import Transformer, get_config
    cfg = get_config("t5_1_1_tiny", dtype="float32", vocab_size=512, num_layers=1, dropout_rate=0.0)
    batch, enc_len, dec_len = 2, 12, 5
    model = Transformer(cfg)
    enc = jnp.ones((batch, enc_len), jnp.int32)
    dec = jnp.ones((batch, dec_len), jnp.int32)
    # Shapes are all that lowering and compiling need: no parameter is materialised.
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), enc, dec))["params"]

    def forward(p):
        return model.apply({"params": p}, enc, dec, dec)

    def loss(p):
        return jnp.mean(forward(p) ** 2)

    return (cfg, batch, enc_len, dec_len, jax.jit(forward).lower(params), jax.jit(jax.grad(loss)).lower(params))


def test_matches_every_matmul_of_the_traced_model(tiny_programs):
    cfg, batch, enc_len, dec_len, fwd, grad = tiny_programs
    counted = flops.stream_flops(cfg, batch, enc_len, dec_len)
    # Exact: the counter names each matmul the model runs (unrolled layers, so every dot appears once).
    assert hlo_matmul_flops(fwd.as_text()) == counted.forward
    # Backward: two matmuls of the same size per forward matmul, none pruned (the embedding is trained).
    assert hlo_matmul_flops(grad.as_text()) == counted.train


def test_within_xla_cost_analysis(tiny_programs):
    cfg, batch, enc_len, dec_len, fwd, grad = tiny_programs
    counted = flops.stream_flops(cfg, batch, enc_len, dec_len)
    for lowered, ours in ((fwd, counted.forward), (grad, counted.train)):
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        # XLA also counts elementwise work (norms, softmax, GELU, loss), which grows like tokens x d_model
        # against the matmuls' tokens x d_model^2: at d_model 64 it was 2.2% (forward) and 3.0% (gradient)
        # of XLA's count here, so the matmuls are at most all of it and at least 90% of it.
        assert 0.90 * cost["flops"] <= ours <= cost["flops"]


def test_shapes_follow_the_measured_cqa_lengths():
    paper = SHAPES["paper"]
    assert (paper.model, paper.batch) == ("t5_1_1_base", 64)
    for field in ("inputs", "targets", "rationales"):
        measured = CQA_MEASURED[field]["batch_max"]
        assert measured <= getattr(paper, field) < measured + 8 and getattr(paper, field) % 8 == 0
    assert (SHAPES["large"].model, SHAPES["large"].batch) == ("t5_1_1_large", 256)


@pytest.mark.slow
def test_harness_writes_its_tables(tmp_path):
    import numpy as np

    from bench import step_bench
    # Batch 8: one row per fake CPU device of the test mesh.
    shape = BenchShape("smoke", "t5_1_1_tiny", 8, 8, 4, 8, overrides=(("vocab_size", 128), ("num_layers", 1)))
    args = step_bench.parse_args(["--reference", "fp32", "--ours", "ours_bf16_fused,ours_bf16_packed,no_such_variant",
                                  "--warmup", "1", "--steps", "1", "--windows", "1", "--peak_tflops", "1",
                                  "--out", str(tmp_path)])
    payload = step_bench.run(args, shape)
    # Ours first, the reference after (a run killed at its time limit keeps ours).
    assert [(r["impl"], r["variant"]) for r in payload["rows"]] == [("ours", "ours_bf16_fused"),
                                                                     ("ours", "ours_bf16_packed"),
                                                                     ("reference", "hf_fp32")]
    assert [f["variant"] for f in payload["failures"]] == ["no_such_variant"]
    from sbs_jax.model import get_config
    cfg = get_config("t5_1_1_tiny", vocab_size=128, num_layers=1, dropout_rate=0.1)
    assert payload["step_flops"] == flops.paired_step_flops(cfg, 8, 8, 4, 8)
    padded, packed_row = [payload["rows"][0], payload["rows"][2]], payload["rows"][1]
    for row in padded:
        assert row["examples_per_s"] == pytest.approx(8 / row["step_s"])
        assert row["mfu"] == pytest.approx(payload["step_flops"] / row["step_s"] / 1e12)
    # Packed: examples (not rows) per second, MFU on the segments' real-token FLOPs.
    packing = packed_row["packing"]
    assert packing["rows"] % 8 == 0 and packed_row["examples_per_step"] == np.mean(packing["examples_per_batch"])
    assert packed_row["examples_per_s"] == pytest.approx(packed_row["examples_per_step"] / packed_row["step_s"])
    assert packed_row["model_flops"] == np.mean(packing["model_flops_per_batch"]) < packing["executed_flops"]
    assert packing["executed_flops"] == flops.packed_step_flops(cfg, packing["rows"], 512, 192)
    assert packed_row["mfu"] == pytest.approx(packed_row["model_flops"] / packed_row["step_s"] / 1e12)
    saved = json.loads((tmp_path / "step_smoke.json").read_text())
    assert saved["environment"]["commit"] and saved["rows"][0]["compiled_memory_bytes"] > 0
    table = (tmp_path / "step_smoke.md").read_text()
    assert "| ours | ours_bf16_fused |" in table and "x hf_fp32" in table and "FAILED no_such_variant" in table
    assert "| ours | ours_bf16_packed |" in table and "`ours_bf16_packed`: 8 packed rows of 512/192 tokens" in table


def test_timed_path_needs_no_seqio_tensorflow_gin():
    # The GPU machines have none of these; the benchmark must run without them.
    import subprocess
    import sys
    code = ("import sys, bench.step_bench, bench.infer_bench, bench.ours, bench.reference, bench.profile; "
            "print(sorted(m for m in ('seqio', 'tensorflow', 'gin', 'sentencepiece', 'tensorflow_text') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_profile_reads_device_kernels_from_a_perfetto_trace(tmp_path):
    import gzip

    from bench.profile import kernel_times, summarize
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "thread_name", "pid": 7, "tid": 1, "args": {"name": "Stream #7(compute)"}},
            {"ph": "M", "name": "thread_name", "pid": 7, "tid": 9, "args": {"name": "XLA Modules"}}]
    # A while loop (1000 us) enclosing a 600 us gemm and a 300 us fusion: 100 us of its own.
    events = [{"ph": "X", "pid": 7, "tid": 1, "name": "while.3", "ts": 0.0, "dur": 1000.0},
              {"ph": "X", "pid": 7, "tid": 1, "name": "sm90_xmma_gemm_bf16bf16", "ts": 0.0, "dur": 600.0},
              {"ph": "X", "pid": 7, "tid": 1, "name": "loop_fusion_3", "ts": 650.0, "dur": 300.0},
              {"ph": "X", "pid": 7, "tid": 1, "name": "sm90_xmma_gemm_bf16bf16", "ts": 2000.0, "dur": 300.0},
              {"ph": "X", "pid": 7, "tid": 9, "name": "jit_train_step", "ts": 0.0, "dur": 2300.0},
              {"ph": "X", "pid": 1, "tid": 2, "name": "PjitFunction(train_step)", "ts": 0.0, "dur": 5000.0}]
    trace = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(trace, "wt") as f:
        json.dump({"traceEvents": meta + events}, f)
    times, source = kernel_times(trace)
    # Host events, and the module line that repeats the stream's kernels, are left out.
    assert source == "device kernels"
    assert times == {"sm90_xmma_gemm_bf16bf16": 900.0, "loop_fusion_3": 300.0, "while.3": 100.0}
    lines = summarize(times, steps=2, wall_step_s=0.001, source=source)
    # 1.3 ms of kernels over 2 steps = 0.65 ms/step of a 1 ms step; gemm is 0.45 ms of it (69%).
    assert lines[0].startswith("- wall 1.0 ms/step; device kernels: 0.7 ms/step (65% of wall")
    assert lines[0].endswith("of which matmul kernels 0.5 ms (69%)")
    assert lines[4].startswith("| `sm90_xmma_gemm_bf16bf16` | 0.45 | 69.2% |")


@pytest.mark.slow
def test_inference_harness_writes_its_table(tmp_path):
    from bench import infer_bench
    shape = BenchShape("smoke", "t5_1_1_tiny", 8, 8, 4, 8, overrides=(("vocab_size", 128), ("num_layers", 1)))
    args = infer_bench.parse_args(["--hf", "fp32", "--ours", "bf16", "--warmup", "1", "--steps", "1",
                                   "--windows", "1", "--out", str(tmp_path)])
    payload = infer_bench.run(args, shape)
    assert payload["failures"] == []
    assert [(r["impl"], r["variant"]) for r in payload["rows"]] == [("ours", "greedy_decode_bf16"),
                                                                     ("reference", "hf_generate_fp32")]
    # Both decode the label stream's padded length (HF may stop early only if every row emits EOS).
    assert payload["rows"][0]["decoded_tokens"] == 4 and 1 <= payload["rows"][1]["decoded_tokens"] <= 4
    assert "x hf_generate_fp32" in (tmp_path / "infer_smoke.md").read_text()


def test_packed_step_matches_every_matmul_of_the_traced_packed_model():
    from bench import packed
    from sbs_jax.model import Transformer, get_config
    cfg = get_config("t5_1_1_tiny", dtype="float32", vocab_size=512, num_layers=1, dropout_rate=0.0)
    model = Transformer(cfg)
    layout = packed.PackedLayout(enc_len=160, dec_len=48)
    batch = packed.packed_batches(1, 2, layout, cfg.vocab_size, seed=3)[0]
    rows = {k: jnp.asarray(v) for k, v in batch.arrays["packed"].items()}
    inputs = {k: v for k, v in rows.items() if k not in ("decoder_loss_weights", "decoder_stream_ids")}
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))["params"]

    def forward(p):
        return model.apply({"params": p}, **inputs)

    fwd = jax.jit(forward).lower(params)
    grad = jax.jit(jax.grad(lambda p: jnp.mean(forward(p) ** 2))).lower(params)
    # Segment masks and per-segment positions add no matmul: the packed step runs the full rows.
    executed = flops.packed_step_flops(cfg, 2, 160, 48)
    assert hlo_matmul_flops(grad.as_text()) == executed
    assert 3 * hlo_matmul_flops(fwd.as_text()) == executed
    # Model FLOPs credit each segment alone on its real tokens: less than what the rows execute, and for a
    # segment filling a whole row exactly what that row executes.
    model_flops = flops.segment_model_flops(cfg, batch.segments)
    assert 0 < model_flops < executed
    assert model_flops == sum(flops.stream_flops(cfg, 1, e, d).train for e, d in batch.segments)
    assert flops.segment_model_flops(cfg, [(160, 48)]) == flops.packed_step_flops(cfg, 1, 160, 48)


def test_packed_batches_follow_the_packed_format_and_measured_lengths():
    import numpy as np

    from bench import packed
    lengths, probs = packed.load_histogram()
    assert probs.sum() == pytest.approx(1.0)
    # The stored histogram reproduces the measured means (CQA_MEASURED, bench/RESULTS.md).
    for field, column in (("inputs", 0), ("targets", 2), ("rationales", 3)):
        assert float(probs @ lengths[:, column]) == pytest.approx(CQA_MEASURED[field]["mean"], abs=0.01)
    layout = packed.PackedLayout()
    batches = packed.packed_batches(3, 4, layout, vocab=100, seed=0)
    for batch in batches:
        rows = batch.arrays["packed"]
        assert all(v.dtype == np.int32 for v in rows.values())
        assert rows["encoder_input_tokens"].shape == (4, 512) and rows["decoder_stream_ids"].shape == (4, 192)
        assert len(batch.segments) == 2 * batch.examples
        for r in range(4):
            for ids, positions in ((rows["encoder_segment_ids"][r], rows["encoder_positions"][r]),
                                   (rows["decoder_segment_ids"][r], rows["decoder_positions"][r])):
                used = ids[ids > 0]
                assert used[0] == 1 and np.all(np.diff(used) >= 0) and np.all(ids[len(used):] == 0)
                for s in np.unique(used):  # positions restart at 0 in every segment
                    assert positions[ids == s].tolist() == list(range(int(np.sum(ids == s))))
            seg, tgt, inp = rows["decoder_segment_ids"][r], rows["decoder_target_tokens"][r], rows["decoder_input_tokens"][r]
            for s in np.unique(seg[seg > 0]):  # inputs are the targets shifted right within the segment
                t, i = tgt[seg == s], inp[seg == s]
                assert i[0] == 0 and np.array_equal(i[1:], t[:-1]) and t[-1] == 1
                assert len(np.unique(rows["decoder_stream_ids"][r][seg == s])) == 1
            assert np.array_equal(rows["decoder_loss_weights"][r] > 0, seg > 0)
        streams = rows["decoder_stream_ids"]
        assert {1, 2} <= set(np.unique(streams).tolist()) <= {0, 1, 2}
    # Consecutive batches draw fresh examples; rows per step chosen for about 64 examples as in the paper.
    assert packed.rows_for_examples(64, layout) == 12
    means = np.mean([b.examples for b in packed.packed_batches(8, 12, layout, 100)])
    assert 56 <= means <= 72


@pytest.mark.parametrize("fused", [False, True])
def test_paired_step_count_is_what_the_objective_runs(fused):
    # The fused objective encodes both streams' rows in one pass and decodes each stream at its own length, so
    # it runs exactly the two-pass matmuls: no label padding to the rationale length is executed or credited.
    from sbs_jax.model import Transformer, get_config
    from sbs_jax.train import objective
    cfg = get_config("t5_1_1_tiny", dtype="float32", vocab_size=512, num_layers=1, dropout_rate=0.0)
    model = Transformer(cfg)
    batch, enc_len, lab_len, rat_len = 2, 12, 3, 7

    def stream(dec_len):
        tokens = jnp.ones((batch, dec_len), jnp.int32)
        return {"encoder_input_tokens": jnp.ones((batch, enc_len), jnp.int32), "decoder_input_tokens": tokens,
                "decoder_target_tokens": tokens, "decoder_loss_weights": jnp.ones((batch, dec_len), jnp.float32)}

    paired = {"label": stream(lab_len), "rationale": stream(rat_len)}
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), paired["label"]["encoder_input_tokens"],
                                               paired["label"]["decoder_input_tokens"]))["params"]
    config = objective.ObjectiveConfig(alpha=0.5, fused=fused)
    grad = jax.jit(jax.grad(lambda p: objective.loss_fn(model, p, paired, jax.random.key(0), config,
                                                        enable_dropout=False)[0])).lower(params)
    assert hlo_matmul_flops(grad.as_text()) == flops.paired_step_flops(cfg, batch, enc_len, lab_len, rat_len)
