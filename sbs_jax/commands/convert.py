"""`sbs convert`: HF or T5X checkpoint -> HF directory (loadable by transformers and by INITIAL_CHECKPOINT_PATH).

    sbs convert --from t5x --input gs_copy/checkpoint_1000000 --output t5_1_1_small_hf [--dtype bfloat16]
    sbs convert --from hf --input downloaded_t5 --output t5_hf_f32
"""
import argparse
import sys

import numpy as np
from etils import epath

from sbs_jax import errors
from sbs_jax.checkpoints import convert as convert_lib
from sbs_jax.checkpoints.layout import flatten


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbs convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source_format", required=True, choices=sorted(convert_lib.LOADERS))
    p.add_argument("--input", required=True, help="HF directory, or T5X msgpack file / checkpoint_N directory")
    p.add_argument("--output", required=True, help="output HF directory (must be empty or absent)")
    p.add_argument("--to", default="hf", choices=["hf"], help="output format")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored weight dtype")
    p.add_argument("--spiece_model", default=None, help="SentencePiece model to copy in as spiece.model")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty output directory")
    return p


@errors.command("sbs convert")
def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error
        return int(e.code or 0)
    output = epath.Path(args.output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not args.overwrite)):
        raise errors.UsageError(f"{output} exists and is not an empty directory (use --overwrite)")
    # A CheckpointError (an InputError) is reported by the boundary: `sbs convert: error: ...`, exit 2.
    config, params = convert_lib.convert(args.source_format, args.input, output, dtype=args.dtype,
                                         spiece_model=args.spiece_model)
    n_params = sum(int(np.size(v)) for v in flatten(params).values())
    if hasattr(config, "model_type"):  # a decoder-only DecoderConfig
        print(f"converted {args.source_format} {args.input} -> HF {output}: {n_params:,} parameters, "
              f"{config.model_type}, hidden={config.hidden_size}, layers={config.num_hidden_layers}, "
              f"{'tied' if config.tie_word_embeddings else 'untied'} embeddings, stored as {args.dtype}")
        return 0
    kind = "T5 v1.0 (tied, scaled)" if config.tie_word_embeddings else "untied output layer (T5 v1.1 style)"
    print(f"converted {args.source_format} {args.input} -> HF {output}: {n_params:,} parameters, "
          f"d_model={config.d_model}, layers={config.num_layers}/{config.decoder_layers}, "
          f"{config.feed_forward_proj}, {kind}, stored as {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
