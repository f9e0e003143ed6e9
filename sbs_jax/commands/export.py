"""`sbs export`: a trained student (params only) to a serving format.

    sbs export --checkpoint=MODEL_DIR --format=hf --output=/tmp/student_hf
    sbs export --checkpoint=MODEL_DIR/checkpoints/2000 --format=saved_model --outputs=label,rationale \
        --dtype=bfloat16 --output=/tmp/student_sm

`--checkpoint` takes a training run directory (its best step, or `--step`), one step directory, or any
checkpoint `sbs convert` reads (HF directory, T5X); the optimizer state is never read.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys

from etils import epath

from sbs_jax import errors, run_dir
from sbs_jax.data.registry import selection
from sbs_jax.data.registry.prefixes import PREDICT_PREFIX
from sbs_jax.export.serving import STREAMS, ServingSpec

FORMATS = ("hf", "saved_model", "stablehlo")


class ExportError(errors.InputError):
    """What the user asked for cannot be exported; the message says why and what was expected."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbs export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoints/<step> directory, HF or T5X")
    p.add_argument("--step", type=int, default=None, help="step of a run directory (default: best, else latest)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True, help="directory to write (must be empty or absent)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="stored weights")
    p.add_argument("--compute_dtype", default=None, choices=("float32", "bfloat16"),
                   help="saved_model/stablehlo: dtype of the computation (default: the checkpoint's, as sbs infer)")
    p.add_argument("--vocab", default=None, help="SentencePiece model (default: the run's vocab/)")
    p.add_argument("--outputs", default="label", help="streams to serve: label or label,rationale")
    p.add_argument("--max_input_length", type=int, default=None, help="default: the run's inputs length, or 512")
    p.add_argument("--max_label_length", type=int, default=None, help="default: the run's targets length, or 64")
    p.add_argument("--max_rationale_length", type=int, default=None,
                   help="default: the run's rationales length, or 256")
    p.add_argument("--num_beams", type=int, default=1, help="1 = greedy (as `sbs infer`)")
    p.add_argument("--length_penalty", type=float, default=1.0)
    p.add_argument("--platforms", default="cpu",
                   help="saved_model/stablehlo: comma-separated platforms the artifact runs on (cpu,cuda,tpu)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --output")
    return p


def run_feature_lengths(model_dir: epath.Path) -> dict:
    """TASK_FEATURE_LENGTHS from the run's run.json; for runs older than run.json, from its operative gin
    config; {} when the run records neither."""
    info = run_dir.read_run_info(model_dir)
    if info and info.get("task_feature_lengths"):
        return {k: int(v) for k, v in info["task_feature_lengths"].items()}
    gin_path = model_dir / "config.gin"
    if not gin_path.is_file():
        return {}
    match = re.search(r"^TASK_FEATURE_LENGTHS\s*=\s*\\?\s*(\{[^}]*\})", gin_path.read_text(), flags=re.MULTILINE)
    if not match:
        return {}
    try:
        lengths = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError) as e:
        raise ExportError(f"{gin_path}: TASK_FEATURE_LENGTHS is not a literal dict: {e}") from e
    return {k: int(v) for k, v in lengths.items()}


def _naming(path: str, message: str) -> str:
    return message if str(path) in message else f"{path}: {message}"


def load_checkpoint(path: str, step: int | None):
    """(config, params, vocab_path or None, run_dir or None) from any checkpoint the project reads."""
    from sbs_jax.checkpoints import CheckpointError, detect_format, load_pretrained
    from sbs_jax.checkpoints.layout import check_params, flatten

    try:
        kind = detect_format(path)
        if kind == "sbs":
            model_dir, _ = run_dir.resolve(path, step)
            config, params, vocab = run_dir.load_params(path, step)
        else:
            if step is not None:
                raise ExportError(f"{path}: --step only applies to a training run directory, this is {kind}")
            (config, params), vocab, model_dir = load_pretrained(path), None, None
        check_params(flatten(params), config, str(path))
    except ExportError:
        raise
    except (CheckpointError, FileNotFoundError, KeyError, TypeError, ValueError) as e:
        raise ExportError(_naming(path, str(e))) from e
    except Exception as e:  # orbax/tensorstore raise their own types for unreadable or foreign data
        raise ExportError(_naming(path, f"not a readable checkpoint ({type(e).__name__}: {e})")) from e
    return config, params, vocab, model_dir


def _check_vocab(vocab, config) -> epath.Path:
    import sentencepiece as spm

    from sbs_jax.data.vocab import hf_tokenizer_vocabulary as hf_vocab

    vocab = epath.Path(vocab)
    if hf_vocab.is_tokenizer_json(vocab):
        raise ExportError(f"{vocab}: a Hugging Face tokenizer.json; `sbs export` writes T5 students, whose "
                          "artifacts tokenise with their SentencePiece model: pass --vocab spiece.model")
    if not vocab.is_file():
        raise ExportError(f"{vocab}: SentencePiece model not found")
    try:
        pieces = spm.SentencePieceProcessor(model_proto=vocab.read_bytes()).GetPieceSize()
    except (OSError, RuntimeError) as e:
        raise ExportError(f"{vocab}: not a SentencePiece model: {e}") from e
    if pieces > config.vocab_size:
        raise ExportError(f"{vocab}: {pieces} pieces, more than the model's vocab_size {config.vocab_size}; "
                          "this vocabulary does not belong to this checkpoint")
    return vocab


def _spec(args, lengths: dict, label_prefix: str = PREDICT_PREFIX) -> ServingSpec:
    outputs = tuple(s.strip() for s in args.outputs.split(",") if s.strip())
    if set(outputs) - set(STREAMS):
        raise ExportError(f"--outputs: expected label or label,rationale, got {args.outputs!r}")
    try:
        return ServingSpec(
            max_input_length=args.max_input_length or lengths.get("inputs", 512),
            max_label_length=args.max_label_length or lengths.get("targets", 64),
            max_rationale_length=args.max_rationale_length or lengths.get("rationales", 256),
            outputs=outputs, num_beams=args.num_beams, length_penalty=args.length_penalty,
            label_prefix=label_prefix)
    except ValueError as e:
        raise ExportError(str(e)) from e


def export(args) -> epath.Path:
    output = epath.Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise ExportError(f"{output}: exists and is not an empty directory (pass --overwrite to replace files)")
    config, params, vocab, model_dir = load_checkpoint(args.checkpoint, args.step)
    if args.compute_dtype:
        config = config.replace(dtype=args.compute_dtype)
    # Served inputs get the label prefix the run trained with (recorded in its selection manifest).
    prefix = selection.run_label_prefix(model_dir, default=PREDICT_PREFIX) if model_dir else PREDICT_PREFIX
    spec = _spec(args, run_feature_lengths(model_dir) if model_dir else {}, prefix)
    vocab = args.vocab or vocab
    if _is_decoder_only(config):
        return _export_causal(args, output, config, params, spec, vocab, model_dir)
    if vocab is not None:
        vocab = _check_vocab(vocab, config)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    if args.format == "hf":
        from sbs_jax.export.hf import export_hf

        return export_hf(output, config, params, spec=spec, dtype=args.dtype, spm_model=vocab)
    if vocab is None:
        raise ExportError(f"--format {args.format} tokenises inside the artifact and needs the student's "
                          f"SentencePiece model: {args.checkpoint} records none, pass --vocab")
    if args.format == "saved_model":
        from sbs_jax.export.saved_model import export_saved_model

        return export_saved_model(output, config, params, spm_model=vocab, spec=spec, dtype=args.dtype,
                                  platforms=platforms)
    from sbs_jax.export.stablehlo import export_stablehlo

    return export_stablehlo(output, config, params, spm_model=vocab, spec=spec, dtype=args.dtype,
                            platforms=platforms)


def _is_decoder_only(config) -> bool:
    from sbs_jax.model.decoder import DecoderConfig

    return isinstance(config, DecoderConfig)


def _export_causal(args, output, config, params, spec: ServingSpec, vocab, model_dir) -> epath.Path:
    """A decoder-only student: an HF causal-LM directory (`sbs_jax.export.hf_causal`)."""
    from sbs_jax.data import schema
    from sbs_jax.data.input_pipeline import causal_lm
    from sbs_jax.data.vocab import hf_tokenizer_vocabulary as hf_vocab
    from sbs_jax.data.vocab import sentencepiece_vocab
    from sbs_jax.export.hf_causal import export_hf_causal
    from sbs_jax.train import causal_evaluation

    if args.format != "hf":
        raise ExportError(f"--format {args.format}: decoder-only students ({config.model_type}) export as "
                          "--format hf (AutoModelForCausalLM; vLLM and TGI serve that directory)")
    if args.outputs != "label":
        raise ExportError(f"--outputs {args.outputs}: a decoder-only export serves the label prompt; its "
                          "rationale comes from the same generation (rationale_first/label_first) or from an explain "
                          "prompt the caller writes (multitask)")
    if vocab is not None and not hf_vocab.is_tokenizer_json(epath.Path(vocab)):
        vocab = _check_vocab(vocab, config)
    causal_format = (run_dir.read_run_info(model_dir) or {}).get("causal_format") if model_dir else None
    new_tokens = spec.max_label_length
    if causal_format not in (None, schema.MULTITASK):
        if vocab is None:
            raise ExportError(f"{args.checkpoint}: records no vocabulary; pass --vocab (the {causal_format} "
                              "format's generation length counts its marker's tokens)")
        layout = causal_lm.layout_for(causal_format, sentencepiece_vocab.load_vocabulary(str(vocab)),
                                      eos_ids=config.eos_ids, bos_id=config.prompt_bos_id)
        new_tokens = causal_evaluation.new_tokens(layout, spec.max_label_length, spec.max_rationale_length)
    return export_hf_causal(output, config, params, spec=spec, dtype=args.dtype, vocab=vocab,
                            causal_format=causal_format, max_new_tokens=new_tokens)


@errors.command("sbs export")
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    output = export(args)  # errors are reported by the boundary (exit 2 for ExportError)
    print(f"sbs export: wrote {args.format} ({args.dtype}) to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
