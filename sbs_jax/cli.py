"""The `sbs` command: one entry point, each verb implemented by its own `sbs_jax.commands` module's
`main(argv) -> int`."""
import importlib
import sys

from sbs_jax import errors

# verb -> (module, help). Modules are imported lazily: TF/JAX start-up is slow and most verbs need one of them.
COMMANDS = {
    "train": ("sbs_jax.commands.train", "train a student (gin: --gin_file=..., --gin.MACRO=value)"),
    "eval": ("sbs_jax.commands.train", "evaluate a checkpoint on a split"),
    "infer": ("sbs_jax.commands.train", "predict labels (and rationales) for JSON lines or plain text"),
    "quickstart": ("sbs_jax.commands.quickstart", "train tiny students on the embedded task and compare methods"),
    "sweep": ("sbs_jax.commands.sweep", "grids of runs (methods × data × models × seeds), results and figures; "
                                        "`sbs sweep report DIR`"),
    "compile": ("sbs_jax.commands.compile", "compile a run for a TPU slice ahead of time (no TPU): per chip memory, "
                                            "fits or not; `sbs compile --topology=v5litepod-16 --gin_file=...`"),
    "convert": ("sbs_jax.commands.convert", "convert HF / T5X checkpoints"),
    "export": ("sbs_jax.commands.export", "export a trained student for serving (hf, saved_model, stablehlo)"),
    "data": ("sbs_jax.commands.data", "data tools: `sbs data check --data_dir D [--dataset NAME]`"),
    "vocab": ("sbs_jax.commands.vocab", "train a SentencePiece vocabulary: `sbs vocab train ...`"),
    "teacher": ("sbs_jax.commands.teacher", "teacher rationales: `sbs teacher generate ...`"),
}

# Verbs with sub-verbs (`sbs data check`): each `sbs <verb> <sub> --help` prints that sub-verb's usage.
SUBCOMMANDS = {"sweep": ("report",), "data": ("check",), "vocab": ("train",), "teacher": ("generate", "prompt")}


def usage() -> str:
    lines = ["usage: sbs <command> [args]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`sbs <command> --help` prints a command's usage."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Dispatch to a verb inside the error boundary (`sbs_jax.errors`): exit 2 for user mistakes, 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = errors.debug_enabled(argv)
    argv = errors.strip_verbose(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        print(f"sbs: error: unknown command {verb!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # Verbs sharing a module (train/eval/infer) get the verb back as argv[0].
    if COMMANDS[verb][0] == "sbs_jax.commands.train":
        rest = [verb] + rest

    def dispatch(args):
        return importlib.import_module(COMMANDS[verb][0]).main(args + (["--verbose"] if verbose else []))

    return errors.run(f"sbs {verb}", dispatch, rest + (["--verbose"] if verbose else []))


if __name__ == "__main__":
    sys.exit(main())
