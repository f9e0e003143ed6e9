"""`sbs compile`: compile a training run for a TPU slice ahead of time, on any machine (no TPU, no data).

    sbs compile --topology=v5litepod-16 --gin_file=models/t5_1_1_base.gin --gin_file=runs/step_by_step.gin \
        --gin_file=datasets/cqa.gin [--gin.BATCH_SIZE=128 ...] [--output_dir=DIR]

The gin files and bindings are those of `sbs train`; shapes come from TASK_FEATURE_LENGTHS (and the buckets
or packed lengths), so no data dir, vocabulary or MODEL_DIR is read. Prints per chip memory against the chip's
HBM, FLOPs and collectives; exit 2 when the plan does not divide over the slice or does not fit.
"""
from __future__ import annotations

import logging
import sys

from absl import flags

from sbs_jax import errors

# MODEL_DIR is required by runs/train.gin but unused here; a user's own binding still wins (parsed later).
_PLACEHOLDER_BINDINGS = ("MODEL_DIR = '(sbs compile: not used)'",)


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("topology", None, "TPU slice: a topology (v5e:4x4, v4:2x2x2, v5p:2x2x4, v6e:2x4) or a Cloud "
                        "accelerator type (v5litepod-16, v4-32, v5p-8, v6e-8)", flag_values=fv)
    flags.DEFINE_integer("num_slices", 1, "slices joined over the data-center network (multislice)", flag_values=fv)
    flags.DEFINE_multi_string("gin_file", [], "gin files, as for `sbs train`", flag_values=fv)
    flags.DEFINE_multi_string("gin_bindings", [], "gin bindings; `--gin.NAME=VALUE` is short for "
                              "`--gin_bindings='NAME = VALUE'`", flag_values=fv)
    flags.DEFINE_list("gin_search_paths", [], "extra folders to look for gin files in", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "write compile_report.json and compile_report.md here", flag_values=fv)
    flags.DEFINE_bool("all_buckets", False, "with LENGTH_BUCKETS, compile every bucket shape the run may meet "
                      "(default: the largest, which needs the most memory)", flag_values=fv)
    flags.DEFINE_bool("train_only", False, "compile the train step only (not the eval step and decoder)",
                      flag_values=fv)
    flags.DEFINE_bool("register_tasks", False, "register the run's tasks as `sbs train` does (needs their data dir "
                      "and vocabulary): a decoder-only student's rationale_first/label_first rows hold the tokenized "
                      "format marker, whose length needs the vocabulary", flag_values=fv)
    flags.DEFINE_string("log_level", "WARNING", "Python logging level", flag_values=fv)
    return fv


def load_train_config(gin_files, bindings, search_paths=(), register_tasks: bool = False):
    """The `TrainConfig` `sbs train` would build from these gin files and bindings, by default without
    registering the tasks (no data dir, vocabulary or MODEL_DIR needed)."""
    from sbs_jax.commands import gin_utils

    gin_utils.parse(gin_files, list(_PLACEHOLDER_BINDINGS) + list(bindings), search_paths)
    # Bindings read only by the task registrations (DATA_DIR, SPIECE_MODEL, ...) go unread here by design;
    # any other unread binding is the error `sbs train` gives.
    return gin_utils.build("TrainConfig", command="sbs compile", register_tasks=register_tasks)


def model_name(model_config) -> str | None:
    """The T5 size preset, or a decoder-only student's family and size."""
    from sbs_jax.model.decoder import DecoderConfig
    from sbs_jax.model.t5 import config as model_config_lib

    if isinstance(model_config, DecoderConfig):
        return (f"{model_config.model_type} ({model_config.num_hidden_layers} layers, hidden "
                f"{model_config.hidden_size})")
    return model_config_lib.preset_name(model_config)


def compile_for_slice(config, slice_, *, all_buckets: bool = False, train_only: bool = False) -> dict:
    """Plan and compile `config` for `slice_`; the report dict (`sbs_jax.tpu.report.build`)."""
    from sbs_jax.tpu import analysis, report, topologies
    from sbs_jax.train import aot

    devices = topologies.devices(slice_)
    try:
        plan = aot.plan_run(config, config.model, devices, num_hosts=slice_.num_hosts)
    except aot.PlanError as e:
        raise errors.UsageError(f"{slice_.given_as}: {e}") from None
    programs = aot.compile_run(plan, all_buckets=all_buckets, eval_programs=not train_only,
                               is_refusal=analysis.is_hbm_oom)
    return report.build(plan, slice_, programs, model_name=model_name(config.model))


def usage(fv: flags.FlagValues) -> str:
    return ("usage: sbs compile --topology=SLICE --gin_file=FILE [--gin_file=FILE ...] [--gin.NAME=VALUE ...] "
            "[flags]\n\ncompile a training run (the gin files and bindings of `sbs train`) for a TPU slice, on any "
            "machine, e.g.\n  sbs compile --topology=v5litepod-16 --gin_file=models/t5_1_1_base.gin "
            "--gin_file=runs/step_by_step.gin --gin_file=datasets/cqa.gin\nPrints per-chip memory against the "
            "chip's HBM, FLOPs and collectives (docs/tpu.md); exit 2 when the plan does not divide over the slice "
            "or does not fit.\n\nflags:\n" + fv.get_help(prefix="  "))


@errors.command("sbs compile")
def main(argv) -> int:
    from sbs_jax.commands import gin_utils

    fv = _flags()
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv):
        print(usage(fv))
        return 0
    try:
        fv(["sbs compile"] + gin_utils.rewrite_gin_args(list(argv)))
    except (flags.Error, ValueError) as e:
        raise errors.UsageError(str(e)) from None
    if not fv.topology:
        raise errors.UsageError("--topology is required (e.g. --topology=v5litepod-16 or --topology=v5e:4x4)")
    logging.basicConfig(level=fv.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from sbs_jax.tpu import report, topologies

    try:
        slice_ = topologies.parse(fv.topology, fv.num_slices)
    except ValueError as e:
        raise errors.UsageError(str(e)) from None
    topologies.quiet_libtpu_environment(slice_)  # before anything imports jax
    config = load_train_config(fv.gin_file, fv.gin_bindings, fv.gin_search_paths, register_tasks=fv.register_tasks)
    result = compile_for_slice(config, slice_, all_buckets=fv.all_buckets, train_only=fv.train_only)
    print(report.render_text(result), flush=True)
    if fv.output_dir:
        json_path, md_path = report.write(result, fv.output_dir)
        print(f"wrote {json_path} and {md_path}", flush=True)
    if not result["fits"]:
        raise errors.UsageError(f"{slice_.given_as}: {report.verdict(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
