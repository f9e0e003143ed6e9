"""The sweep's grid: its gin-configured settings (`Sweep`), the cells they plan, and each cell's gin.

A cell is one ordinary training run (the same gin files and trainer as `sbs train`) in
`<sweep_dir>/<model>/<method>/f<fraction>/seed<seed>`.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

# method -> (run gin file, extra bindings). Step-by-step with teacher labels is step_by_step.gin on the
# `_sbs_llm` task variant (register.py: D_sbs_llm); distill.gin uses D_distill, finetune.gin D_ft.
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "finetune": ("runs/finetune.gin", ()),
    "distill": ("runs/distill.gin", ()),
    "step_by_step": ("runs/step_by_step.gin", ()),
    "step_by_step_llm": ("runs/step_by_step.gin", ("TASK_VARIANT = 'sbs_llm'",)),
}
METHOD_TITLES = {"finetune": "standard finetuning", "distill": "standard distillation",
                 "step_by_step": "step-by-step (gold labels)", "step_by_step_llm": "step-by-step (teacher labels)"}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """One sweep (gin: `Sweep.FIELD = value`; gin/sweeps/*.gin hold the paper's studies).

    sweep_dir: SWEEP_DIR, local or gs://. dataset_gin: the dataset file every cell uses (e.g.
    'datasets/cqa.gin', 'datasets/arith.gin'). models: model preset names ('t5_1_1_small' -> models/<name>.gin,
    random init) or 'preset=CHECKPOINT' (that file plus INITIAL_CHECKPOINT_PATH). gin_files: recipe files given
    after the dataset file (e.g. 'runs/paper_t5_1_1_base.gin'). bindings: gin bindings for every cell, after
    the files. fraction_binding: the gin parameter that takes the cell's training fraction; the project's
    dataset files (paper datasets and the embedded task) route TRAIN_FRACTION to their registration. Each cell checks the registered task really kept
    that fraction. variants: more methods, each a method of METHODS with extra bindings, named in `methods`
    like the others: {'sbs_k4': ['step_by_step', ["sbs_jax.tasks.register_arith_tasks.rationales_per_example
    = 4"]]} (its cells live in `<model>/sbs_k4/...`).
    """
    sweep_dir: str
    dataset_gin: str
    methods: Sequence[str] = tuple(METHODS)
    fractions: Sequence[float] = (1.0,)
    seeds: Sequence[int] = (0,)
    models: Sequence[str] = ("t5_1_1_small",)
    gin_files: Sequence[str] = ()
    bindings: Sequence[str] = ()
    fraction_binding: str = "TRAIN_FRACTION"
    variants: Mapping[str, Sequence] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        def fail(field, expected, got):
            raise ValueError(f"Sweep.{field}: expected {expected}, got {got!r}")
        if not isinstance(self.sweep_dir, str) or not self.sweep_dir:
            raise ValueError("Sweep.sweep_dir is not set: pass --gin.SWEEP_DIR=\"'/path/or/gs://bucket/dir'\"")
        if not isinstance(self.dataset_gin, str) or not self.dataset_gin:
            fail("dataset_gin", "a dataset gin file, e.g. 'datasets/cqa.gin'", self.dataset_gin)
        for name in ("methods", "fractions", "seeds", "models"):
            values = list(getattr(self, name))
            if not values:
                fail(name, "a non-empty list", values)
            if len(set(values)) != len(values):
                fail(name, "no repeated entries", values)
        if not isinstance(self.variants, Mapping):
            fail("variants", "a dict {name: [method, [binding, ...]]}", self.variants)
        for name, spec in self.variants.items():
            ok = (isinstance(name, str) and name and "/" not in name and name not in METHODS
                  and isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[0] in METHODS
                  and isinstance(spec[1], (list, tuple)) and all(isinstance(b, str) for b in spec[1]))
            if not ok:
                fail(f"variants[{name!r}]", f"a new name -> [one of {list(METHODS)}, [gin binding strings]]", spec)
        unknown = [m for m in self.methods if m not in METHODS and m not in self.variants]
        if unknown:
            fail("methods", f"some of {list(METHODS)} or of Sweep.variants {list(self.variants)}", unknown)
        bad = [f for f in self.fractions if isinstance(f, bool) or not isinstance(f, (int, float))
               or not 0.0 < f <= 1.0]
        if bad:
            fail("fractions", "numbers in (0, 1]", bad)
        bad = [s for s in self.seeds if isinstance(s, bool) or not isinstance(s, int)]
        if bad:
            fail("seeds", "integers", bad)
        for m in self.models:
            name, _, ckpt = str(m).partition("=")
            if not name or "/" in name or (("=" in str(m)) and not ckpt):
                fail("models", "'preset' or 'preset=CHECKPOINT_PATH'", m)


@dataclasses.dataclass(frozen=True)
class Cell:
    model: str
    method: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        """The cell's path below the sweep dir, e.g. `t5_1_1_small/finetune/f0.125/seed1`."""
        return f"{self.model}/{self.method}/f{self.fraction:g}/seed{self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_spec(entry: str) -> tuple[str, str | None]:
    """'t5_1_1_base=/ckpt/x' -> ('t5_1_1_base', '/ckpt/x'); 't5_1_1_small' -> ('t5_1_1_small', None)."""
    name, _, ckpt = entry.partition("=")
    return name, (ckpt or None)


def method_spec(config: SweepConfig, method: str) -> tuple[str, tuple[str, ...]]:
    """(run gin file, bindings) of a method or of one of the sweep's variants."""
    if method in METHODS:
        return METHODS[method]
    base, bindings = config.variants[method]
    run_gin, base_bindings = METHODS[base]
    return run_gin, (*base_bindings, *bindings)


def method_order(methods) -> list[str]:
    """METHODS' order first, then other (variant) methods by name."""
    present = set(methods)
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def plan_cells(config: SweepConfig) -> list[Cell]:
    """Every cell, model-major then method, fraction, seed (the order they run in)."""
    return [Cell(model_spec(m)[0], method, float(f), int(s))
            for m in config.models for method in config.methods for f in config.fractions for s in config.seeds]


def cell_gin(config: SweepConfig, cell: Cell, model_dir: str, extra_bindings: Sequence[str] = ()) -> dict:
    """The gin files and bindings of one cell, in `sbs train` order: model, run, dataset, recipe files; then the
    sweep's bindings, the command line's, and last the cell's own (so nothing overrides them)."""
    entry = next(m for m in config.models if model_spec(m)[0] == cell.model)
    _, checkpoint = model_spec(entry)
    run_gin, method_bindings = method_spec(config, cell.method)
    files = [f"models/{cell.model}.gin", run_gin, config.dataset_gin, *config.gin_files]
    own = [*method_bindings, f"MODEL_DIR = {model_dir!r}", f"SEED = {cell.seed}",
           f"{config.fraction_binding} = {cell.fraction!r}"]
    if checkpoint:
        own.append(f"INITIAL_CHECKPOINT_PATH = {checkpoint!r}")
    return {"gin_files": files, "bindings": [*config.bindings, *extra_bindings, *own]}
