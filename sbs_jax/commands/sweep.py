"""`sbs sweep`: run a grid of training runs, then write results and figures; `sbs sweep report DIR` rebuilds
them from the run dirs.

    sbs sweep --gin_file=sweeps/data_size.gin --gin.SWEEP_DIR="'/runs/cqa_data_size'" \
        --gin.DATA_DIR="'/data/datasets'" --gin.SPIECE_MODEL="'/ckpt/t5-v1_1-base/spiece.model'"
    sbs sweep report /runs/cqa_data_size

`--gin.Sweep.FIELD=...` bindings configure the sweep; every other `--gin.X=Y` binding is passed to every cell.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import gin


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbs sweep", description=__doc__.splitlines()[0],
                                epilog="sub-verbs: `sbs sweep report SWEEP_DIR` rebuilds results and figures")
    p.add_argument("--gin_file", action="append", default=[], help="sweep gin files (e.g. sweeps/data_size.gin)")
    p.add_argument("--gin_bindings", action="append", default=[], help="gin binding; --gin.X=Y is short for it")
    p.add_argument("--gin_search_paths", action="append", default=[], help="extra folders for gin files")
    p.add_argument("--dry_run", action="store_true", help="print the planned cells and their gin, run nothing")
    p.add_argument("--in_process", action="store_true",
                   help="run the cells in this process instead of one fresh process each (faster start-up, "
                        "less isolated; for small grids)")
    p.add_argument("--no_report", action="store_true", help="do not write results and figures at the end")
    return p


def is_sweep_binding(binding: str) -> bool:
    return binding.lstrip().startswith(("Sweep.", "SWEEP_DIR"))


def parse_sweep(gin_files, bindings, search_paths=()):
    """Parse the sweep's gin (only `Sweep` and macros) and build its SweepConfig."""
    from sbs_jax.sweep import grid
    from sbs_jax.commands import gin_utils

    gin.clear_config()
    if not gin.config._REGISTRY.get("Sweep"):  # noqa: SLF001 - register once per process
        gin.external_configurable(grid.SweepConfig, "Sweep")
    for path in list(search_paths) + gin_utils.default_search_paths():
        gin.add_config_file_search_path(path)
    root = logging.getLogger()
    root.addFilter(gin_utils._path_not_found_filter)  # noqa: SLF001 - gin's harmless search-path noise
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings), skip_unknown=False,
                                            finalize_config=False)
    finally:
        root.removeFilter(gin_utils._path_not_found_filter)  # noqa: SLF001
    try:
        return gin.get_configurable("Sweep")()
    except (TypeError, ValueError) as e:
        raise ValueError(f"sweep gin: {e}") from None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from sbs_jax.sweep import grid, results, runner
    from sbs_jax.commands import gin_utils

    if argv and argv[0] == "report":
        report = argparse.ArgumentParser(prog="sbs sweep report", description="rebuild results.jsonl, results.md "
                                         "and the figures of a sweep from its cells' run dirs")
        report.add_argument("sweep_dir", metavar="SWEEP_DIR")
        sweep_dir = report.parse_args(argv[1:]).sweep_dir
        out = results.write_report(sweep_dir)
        print(f"{len(out['rows'])} cells counted, {len(out['missing'])} not; wrote results.jsonl, results.md "
              f"and {len(out['figures'])} figures in {sweep_dir}")
        return 0
    try:
        args = _parser().parse_args(gin_utils.rewrite_gin_args(argv))
    except ValueError as e:
        print(f"sbs sweep: {e}", file=sys.stderr)
        return 2
    if not args.gin_file:
        print("sbs sweep: give a sweep gin file, e.g. --gin_file=sweeps/data_size.gin", file=sys.stderr)
        return 2
    try:
        config = parse_sweep(args.gin_file, args.gin_bindings, args.gin_search_paths)
    except (ValueError, IOError) as e:
        print(f"sbs sweep: {e}", file=sys.stderr)
        return 2
    cell_bindings = [b for b in args.gin_bindings if not is_sweep_binding(b)]
    if args.dry_run:
        for cell in grid.plan_cells(config):
            spec = runner.cell_spec(config, cell, cell_bindings)
            print(f"{cell.key}: files {spec['gin_files']} bindings {spec['bindings']}")
        return 0
    try:
        launch = runner.launch_subprocess
        if args.in_process:
            from sbs_jax.commands import sweep_cell as cell

            from sbs_jax.commands import jax_setup

            jax_setup.enable_compilation_cache()  # what each cell process would set up for itself
            launch = cell.launch_in_process
        runner.run_sweep(config, cell_bindings, launch=launch)
    except runner.CellFailed as e:
        print(f"sbs sweep: {e}", file=sys.stderr)
        return 1
    if not args.no_report:
        out = results.write_report(config.sweep_dir)
        print(f"results: {config.sweep_dir}/results.md, results.jsonl and {len(out['figures'])} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
