"""The shared-prompt paired step (`multitask_shared_prompt`) against the two-sequence step, CPU, CQA lengths.

Both steps are the decoder-only student's loss and gradients (`causal_objective.loss_fn` under
`jax.value_and_grad`; the optimizer update costs the same for both and is left out) over the same examples:
- two-sequence: `multitask` rows `[BOS] x prefix label EOS` and `[BOS] x prefix rationale EOS` (the prefix
  after the input, as in the shared format, so both compute exactly the same losses; tests/test_causal_shared_prompt.py);
- shared: one tree row per example, `[BOS] x | prefix label EOS | prefix rationale EOS`.
Per-example lengths are drawn (fixed seed) from the joint CQA histogram `bench/cqa_lengths.json` (inputs with a
stream prefix and EOS, label and rationale with EOS); prefixes are `PREFIX_TOKENS` tokens, token ids random.
Two paddings: `batch_max` (each group's rows cut to its longest row, rounded up to 8) and `task_lengths` (the
layout's fixed row lengths for the histogram's maxima, what a run with those TASK_FEATURE_LENGTHS pads to).
Reported per example: compiled FLOPs (XLA `cost_analysis` of the jitted step) and the median step time over
windows that alternate the two steps (so a loaded machine slows both alike), and shared / two-sequence ratios.

    nice -n 5 python -m bench.shared_prompt [--tiny] [--out table.md]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a CPU benchmark: no accelerator probing

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.packed import load_histogram, sample_lengths  # noqa: E402
from sbs_jax.data import schema  # noqa: E402
from sbs_jax.data.input_pipeline import causal_lm  # noqa: E402
from sbs_jax.model.decoder import DecoderLM, presets  # noqa: E402
from sbs_jax.train import causal_objective  # noqa: E402
from sbs_jax.train.objective import ObjectiveConfig  # noqa: E402

BOS, EOS = 1, 2
PREFIX_TOKENS = 2  # `predict: ` / `explain: ` are 2 SentencePiece tokens each (`▁predict`, `:`) in sbs-jax's vocabularies
LABEL_PREFIX, RATIONALE_PREFIX = (3, 5), (4, 5)
# A small Llama-style student (vocabulary of the measured CQA tokenizer's size) and a tiny one for the test.
MODEL = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, vocab_size=8000)
TINY_MODEL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, vocab_size=256)
PADDINGS = ("batch_max", "task_lengths")
STEPS = ("two-sequence", "shared")


def synthetic_examples(lengths: np.ndarray, vocab: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Task features of the measured lengths ([n, 4]: inputs, explain inputs, targets, rationales, EOS included;
    inputs include the prefix), the prefixes in front as the tasks tokenize them."""
    rng = np.random.default_rng(seed)
    out = []
    for inputs, _, targets, rationales in lengths:
        x = rng.integers(6, vocab, int(inputs) - PREFIX_TOKENS - 1)
        out.append({"inputs": np.concatenate([LABEL_PREFIX, x, [EOS]]),
                    "rationale_inputs": np.concatenate([RATIONALE_PREFIX, x, [EOS]]),
                    "targets": np.concatenate([rng.integers(6, vocab, int(targets) - 1), [EOS]]),
                    "rationales": np.concatenate([rng.integers(6, vocab, int(rationales) - 1), [EOS]])})
    return out


def prefix_after_input(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The features whose `multitask` rows are the shared row's two sequences (prefix after the input)."""
    out = dict(ex)
    for key, prefix in (("inputs", LABEL_PREFIX), ("rationale_inputs", RATIONALE_PREFIX)):
        out[key] = np.concatenate([ex[key][len(prefix):-1], prefix, ex[key][-1:]])
    return out


def batches(examples, padding: str) -> dict[str, dict]:
    """{"two-sequence": multitask rows, "shared": tree rows} of the same examples."""
    layouts = {"two-sequence": causal_lm.CausalLayout(schema.MULTITASK, eos_id=EOS, bos_id=BOS, source_eos_id=EOS),
               "shared": causal_lm.CausalLayout(schema.MULTITASK_SHARED_PROMPT, eos_id=EOS, bos_id=BOS,
                                                source_eos_id=EOS, label_prefix=LABEL_PREFIX,
                                                rationale_prefix=RATIONALE_PREFIX)}
    features = {"two-sequence": [prefix_after_input(ex) for ex in examples], "shared": examples}
    measured = load_histogram()[0]  # every length CQA train has: task lengths that hold all its examples
    task = {"inputs": int(measured[:, :2].max()), "targets": int(measured[:, 2].max()),
            "rationales": int(measured[:, 3].max())}
    out = {}
    for step, layout in layouts.items():
        if padding == "task_lengths":
            rows = layout.row_lengths(task, True)
        else:
            longest: dict[str, int] = {}
            for ex in features[step]:
                for key, row in causal_lm.example_rows(ex, layout, True).items():
                    longest[key] = max(longest.get(key, 0), row[schema.DECODER_TOKENS].shape[0])
            rows = {k: -(-n // 8) * 8 for k, n in longest.items()}
        out[step] = causal_lm.causal_rows(features[step], layout, paired=True, lengths=rows)
    return out


def compiled_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, load average {load} at the start; jax {jax.__version__} on {jax.devices()[0].platform}"


def run(*, tiny: bool, examples: int, windows: int, steps: int, paddings=PADDINGS, seed: int = 0) -> dict:
    """{padding: {step: {"flops", "seconds", "rows", "padded_tokens", "real_tokens"}}} per example."""
    config = presets.get_config("llama_tiny", dtype="float32", **(TINY_MODEL if tiny else MODEL))
    model = DecoderLM(config)
    params = model.init(jax.random.key(seed), jnp.ones((1, 8), jnp.int32))["params"]
    lengths = sample_lengths(examples, seed)
    data = synthetic_examples(lengths, config.vocab_size, seed)
    objective = ObjectiveConfig()

    def step_fn(p, batch):
        return jax.value_and_grad(lambda q: causal_objective.loss_fn(model, q, batch, None, objective)[0])(p)

    results = {}
    for padding in paddings:
        by_step = batches(data, padding)
        compiled, row = {}, {}
        for step, batch in by_step.items():
            batch = jax.tree.map(jnp.asarray, batch)
            by_step[step] = batch
            compiled[step] = jax.jit(step_fn).lower(params, batch).compile()
            jax.block_until_ready(compiled[step](params, batch))  # warm-up
            groups = list(batch.values())
            row[step] = {"flops": compiled_flops(compiled[step]) / examples,
                         "rows": " + ".join(f"{g[schema.DECODER_TOKENS].shape[0]}x{g[schema.DECODER_TOKENS].shape[1]}"
                                            for g in groups),
                         "padded_tokens": sum(g[schema.DECODER_TOKENS].size for g in groups) / examples,
                         "real_tokens": sum(int(g[schema.DECODER_VALID].sum()) for g in groups) / examples}
        times = {step: [] for step in by_step}
        for w in range(windows):
            for step in (STEPS if w % 2 == 0 else STEPS[::-1]):
                t0 = time.perf_counter()
                for _ in range(steps):
                    out = compiled[step](params, by_step[step])
                jax.block_until_ready(out)
                times[step].append((time.perf_counter() - t0) / steps / examples)
        for step in by_step:
            row[step]["seconds"] = statistics.median(times[step])
        results[padding] = row
    return {"results": results, "config": config, "examples": examples, "windows": windows, "steps": steps}


def table(report: dict) -> str:
    cfg = report["config"]
    lines = [f"Decoder-only loss+gradient step, {report['examples']} CQA-length examples per step (lengths from "
             f"bench/cqa_lengths.json), Llama-style student hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
             f"vocab {cfg.vocab_size}, float32; time = median of {report['windows']} alternating windows of "
             f"{report['steps']} steps.", "",
             "| padding | step | rows x length | tokens/example (real / padded) | MFLOPs/example | ms/example |",
             "|---|---|---|---|---|---|"]
    for padding, row in report["results"].items():
        for step in STEPS:
            r = row[step]
            lines.append(f"| {padding} | {step} | {r['rows']} | {r['real_tokens']:.1f} / {r['padded_tokens']:.1f} | "
                         f"{r['flops'] / 1e6:.1f} | {r['seconds'] * 1e3:.2f} |")
        s, t = row["shared"], row["two-sequence"]
        lines.append(f"| {padding} | **shared / two-sequence** | | {s['real_tokens'] / t['real_tokens']:.3f} / "
                     f"{s['padded_tokens'] / t['padded_tokens']:.3f} | **{s['flops'] / t['flops']:.3f}** | "
                     f"**{s['seconds'] / t['seconds']:.3f}** |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and few examples (the test's smoke run)")
    parser.add_argument("--examples", type=int, default=None, help="examples per step (default 16; tiny 4)")
    parser.add_argument("--windows", type=int, default=None, help="timed windows per step (default 4; tiny 2)")
    parser.add_argument("--steps", type=int, default=None, help="steps per window (default 2; tiny 1)")
    parser.add_argument("--padding", choices=PADDINGS, action="append", help="only these paddings (default both)")
    parser.add_argument("--out", type=pathlib.Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    where = machine()
    report = run(tiny=args.tiny, examples=args.examples or (4 if args.tiny else 16),
                 windows=args.windows or (2 if args.tiny else 4), steps=args.steps or (1 if args.tiny else 2),
                 paddings=tuple(args.padding or PADDINGS))
    text = f"Machine: {where}\n\n" + table(report)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
