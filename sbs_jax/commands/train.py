"""`sbs train | eval | infer`: parse flags and gin, start the distributed runtime, call the library.

    sbs train --gin_file=models/t5_1_1_base.gin --gin_file=runs/step_by_step.gin --gin_file=datasets/cqa.gin \
        --gin.MODEL_DIR="'/runs/cqa'" --gin.DATA_DIR="'/data/datasets'" --gin.TRAIN_STEPS=100
"""
from __future__ import annotations

import json
import logging
import sys

from absl import flags

from sbs_jax import errors

VERBS = ("train", "eval", "infer")
_CONFIGURABLE = {"train": "TrainConfig", "eval": "EvalConfig", "infer": "InferConfig"}
_WHAT = {"train": ("train a student", "models/t5_1_1_small.gin --gin_file=runs/step_by_step.gin "
                                      "--gin_file=datasets/cqa.gin"),
         "eval": ("evaluate a trained run on a split", "runs/eval.gin --gin_file=datasets/cqa.gin"),
         "infer": ("predict labels (and rationales) for new inputs", "runs/infer.gin")}


def usage(verb: str) -> str:
    what, files = _WHAT[verb]
    flags_help = _flags().get_help(prefix="  ")
    return (f"usage: sbs {verb} --gin_file=FILE [--gin_file=FILE ...] [--gin.NAME=VALUE ...] [flags]\n\n"
            f"{what}, configured with gin (docs/training.md), e.g.\n"
            f"  sbs {verb} --gin_file={files} --gin.MODEL_DIR=\"'/runs/x'\" ...\n\n"
            "--gin.NAME=VALUE binds a macro or a configurable's parameter (a Python literal: strings need their own "
            "quotes);\na binding you give that the run does not read is an error. Gin files are looked up as given and "
            "under the installed gin/ folder.\n\nflags:\n" + flags_help)


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_multi_string("gin_file", [], "gin files (looked up on the search paths too)", flag_values=fv)
    flags.DEFINE_multi_string("gin_bindings", [], "gin bindings; `--gin.NAME=VALUE` is short for "
                              "`--gin_bindings='NAME = VALUE'`", flag_values=fv)
    flags.DEFINE_list("gin_search_paths", [], "extra folders to look for gin files in", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "multi-process: host:port of process 0, or `auto` (TPU)",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "multi-process: number of processes", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "multi-process: this process's index", flag_values=fv)
    flags.DEFINE_string("log_level", "WARNING", "Python logging level (INFO shows orbax/absl detail)",
                       flag_values=fv)
    return fv


@errors.command()
def main(argv) -> int:
    argv = list(argv)
    if not argv or argv[0] not in VERBS:
        raise errors.UsageError(f"usage: sbs {{{'|'.join(VERBS)}}} --gin_file=... [--gin.MACRO=value ...]")
    verb = argv[0]
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        print(usage(verb))
        return 0
    from sbs_jax.commands import gin_utils, jax_setup

    fv = _flags()
    try:
        fv([f"sbs {verb}"] + gin_utils.rewrite_gin_args(argv[1:]))
    except (flags.Error, ValueError) as e:
        raise errors.UsageError(str(e)) from None
    logging.basicConfig(level=fv.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(fv.log_level.upper())

    from sbs_jax.train import distributed

    distributed.maybe_initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
    import jax

    jax_setup.enable_compilation_cache()
    gin_utils.parse(fv.gin_file, fv.gin_bindings, fv.gin_search_paths)
    config = gin_utils.build(_CONFIGURABLE[verb], f"sbs {verb}")
    if verb == "train":
        from sbs_jax.train import trainer

        # The Trainer checks MODEL_DIR against the new run before anything is written there.
        run = trainer.Trainer(config)
        if jax.process_index() == 0:
            gin_utils.write_operative_config(config.model_dir)
        result = run.run()
    elif verb == "eval":
        from sbs_jax.train import evaluation

        result = evaluation.run_eval(config)
    else:
        from sbs_jax.train import infer

        result = infer.run_infer(config)
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
