"""No gin binding is silently ignored (sbs_jax/commands/gin_bindings.py), DecodeConfig reaches evaluation in
`sbs train` and `sbs eval`, and gin files resolve from a working directory that holds `runs/`, `models/`, ..."""
import pytest
from etils import epath

from sbs_jax import errors
from sbs_jax.commands import gin_utils, jax_setup, train as train_cmd
from sbs_jax.sweep import runner
from sbs_jax.train import evaluation, trainer

ARITH_TRAIN = ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/step_by_step.gin",
               "--gin_file=datasets/arith.gin"]
ARITH_EVAL = ["--gin_file=runs/eval.gin", "--gin_file=datasets/arith.gin"]


class _Reached(Exception):
    pass


@pytest.fixture
def no_cache(monkeypatch):
    # The commands turn on JAX's persistent cache process-wide; keep it out of the test process.
    monkeypatch.setattr(jax_setup, "enable_compilation_cache", lambda: None)


def _sbs(argv, capsys):
    code = train_cmd.main(argv)
    out = capsys.readouterr()
    return code, out.err


def test_num_beams_reaches_the_decoder_of_sbs_eval(monkeypatch, capsys, tmp_path, no_cache):
    seen = {}

    def decoder(model, mesh, rules, decode):
        seen["decode"] = decode
        raise _Reached

    monkeypatch.setattr(evaluation, "load_for_inference", lambda *a: (None, None, None, None, None, 0))
    monkeypatch.setattr(evaluation, "Decoder", decoder)
    code, err = _sbs(["eval", *ARITH_EVAL, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.DecodeConfig.num_beams=2",
                      "--gin.DecodeConfig.length_sorted_batches=False"], capsys)
    assert seen, err  # the run got as far as building the evaluator's decoder
    assert seen["decode"].num_beams == 2 and seen["decode"].length_sorted_batches is False
    assert code == 1 and "_Reached" in err


def test_num_beams_reaches_the_evaluation_of_sbs_train(monkeypatch, capsys, tmp_path, no_cache):
    seen = {}

    class Trainer:
        def __init__(self, config):
            seen["config"] = config
            raise _Reached

    monkeypatch.setattr(trainer, "Trainer", Trainer)
    _sbs(["train", *ARITH_TRAIN, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.DecodeConfig.num_beams=2"], capsys)
    assert seen["config"].decode.num_beams == 2


def test_an_unused_command_line_binding_is_an_error_naming_it(capsys, tmp_path, no_cache):
    code, err = _sbs(["eval", *ARITH_EVAL, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.OptimizerConfig.b1=0.5",
                      "--gin.PACK=True"], capsys)
    assert code == 2, err
    assert "OptimizerConfig.b1 (--gin.OptimizerConfig.b1=0.5)" in err
    assert "TrainConfig.optimizer" in err  # what would read it in a training run
    assert "PACK (--gin.PACK=True)" in err and "runs/train.gin" in err


def test_an_unused_binding_of_a_user_file_names_file_and_line(capsys, tmp_path, no_cache):
    mine = tmp_path / "mine.gin"
    mine.write_text("BATCH_SIZE = 4\nInferConfig.input_length = 12\n")
    code, err = _sbs(["train", *ARITH_TRAIN, f"--gin_file={mine}", f"--gin.MODEL_DIR='{tmp_path / 'm'}'"], capsys)
    assert code == 2, err
    assert f"InferConfig.input_length ({mine}:2)" in err and "BATCH_SIZE" not in err


def test_shipped_files_warn_and_scoped_bindings_count_as_used(monkeypatch, capsys, tmp_path, no_cache):
    seen = {}

    def run_eval(config):
        seen["config"] = config
        return {}

    monkeypatch.setattr(evaluation, "run_eval", run_eval)
    # task_name is called in the macro's scope MIXTURE_OR_TASK_NAME: the scoped binding is the one it reads.
    code, err = _sbs(["eval", *ARITH_EVAL, f"--gin.MODEL_DIR='{tmp_path}'",
                      "--gin.MIXTURE_OR_TASK_NAME/task_name.variant='ft'"], capsys)
    assert code == 0, err
    assert seen["config"].mixture_or_task_name == "arith_ft"
    # ... and the unscoped one it overrides is not read (a shipped file's: a warning).
    assert "task_name.variant (runs/eval.gin:" in err
    # eval takes the model from the run: the dataset file's VOCAB_SIZE is not read, and said so.
    assert "warning: gin binding not used by this run: VOCAB_SIZE (datasets/arith.gin:8)" in err
    assert "error" not in err


def test_gin_files_resolve_from_a_directory_holding_runs_and_models(tmp_path, monkeypatch):
    for folder in ("runs", "models", "datasets", "sweeps"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` / `python -c` put it
    gin_utils.parse(["models/t5_1_1_tiny.gin", "runs/finetune.gin", "datasets/arith.gin"], ["MODEL_DIR = '/m'"])


@pytest.mark.slow  # a cell process: ~10 s of TF/JAX start-up
def test_sweep_cell_runs_from_a_directory_holding_runs_and_models(tmp_path, monkeypatch):
    """The cell process must not import from, or look gin packages up in, the working directory."""
    for folder in ("runs", "models", "datasets", "sweeps"):
        (tmp_path / folder).mkdir()
    (tmp_path / "gin.py").write_text("raise ImportError('the working directory is on the cell\\'s sys.path')\n")
    monkeypatch.chdir(tmp_path)
    # Stops right after parsing (MODEL_DIR unset), before any training: what the log says shows how far it got.
    spec = {"cell": {"model": "t5_1_1_tiny", "method": "finetune", "fraction": 1.0, "seed": 0},
            "fraction_binding": "TRAIN_FRACTION", "gin_files": ["models/t5_1_1_tiny.gin", "runs/finetune.gin",
                                                                 "datasets/arith.gin"],
            "bindings": ["TASK_REGISTRATIONS = []", "MODEL_DIR = %gin.REQUIRED"]}
    with pytest.raises(runner.CellFailed):
        runner.launch_subprocess(spec, epath.Path(tmp_path / "cell"))
    log = (tmp_path / "cell" / "cell.log").read_text()
    assert "gin macro MODEL_DIR is required" in log, log


def test_sweep_cells_warn_where_sbs_train_stops(capsys, tmp_path):
    """A binding a sweep gives every cell may be meant for some methods only: a finetuning cell warns."""
    files = ["models/t5_1_1_tiny.gin", "runs/finetune.gin", "datasets/arith.gin"]
    bindings = [f"MODEL_DIR = '{tmp_path}'", "RATIONALE_WEIGHT = 2.0"]
    gin_utils.parse(files, bindings)
    with pytest.raises(errors.UsageError, match=r"RATIONALE_WEIGHT \(--gin.RATIONALE_WEIGHT=2.0\).*step_by_step.gin"):
        gin_utils.build("TrainConfig", "sbs train")
    gin_utils.parse(files, bindings)
    gin_utils.build("TrainConfig", "sweep cell", strict=False)
    assert "sweep cell: warning: gin binding not used by this run: RATIONALE_WEIGHT" in capsys.readouterr().err
