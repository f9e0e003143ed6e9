"""End-to-end training: one step on the shared CQA data, the CLI on the embedded task (train, eval from the
predictions file, infer, load_params), gin errors, and checkpoint fallback."""
import json
import pathlib

import jax
import numpy as np
import pytest

from sbs_jax.model import get_config
from sbs_jax.commands import gin_utils, train as train_main
from sbs_jax.train import checkpointing, objective, optim, trainer

TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0, dtype="float32")


@pytest.fixture(scope="module")
def cqa_tasks(datasets_dir, tmp_path_factory):
    from sbs_jax import tasks
    from sbs_jax.data.records import data_dir as records
    from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib

    data = records.read_split(datasets_dir, "cqa", "train")
    texts = vocab_lib.model_texts(data.examples[:2000])
    spm = vocab_lib.train_vocabulary(texts, tmp_path_factory.mktemp("cqa_vocab"), vocab_size=600)
    return tasks.register_paper_tasks(str(datasets_dir), datasets=["cqa"], vocabulary=str(spm),
                                      valid_from_train=0.1)


@pytest.mark.slow  # ~40 s: trains a vocabulary on 2,000 CQA examples first
def test_one_step_on_shared_cqa(cqa_tasks, tmp_path):
    assert "cqa_sbs" in cqa_tasks
    config = trainer.TrainConfig(
        model_dir=str(tmp_path / "run"), mixture_or_task_name="cqa_sbs",
        task_feature_lengths={"inputs": 64, "targets": 8, "rationales": 32}, train_steps=1, batch_size=8,
        model=get_config("t5_1_1_tiny", vocab_size=640, **TINY),
        optimizer=optim.OptimizerConfig(learning_rate=1e-3), objective=objective.ObjectiveConfig(alpha=0.5),
        validation_split=None, test_split=None, save_every=1, tensorboard=False)
    summary = trainer.train(config)
    assert summary["final_step"] == 1
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"][-1]
    # A random student over a 600-piece vocabulary starts near ln(600) = 6.4 per token in both streams.
    assert 5.0 < train["label/loss"] < 8.0 and 5.0 < train["rationale/loss"] < 8.0
    assert train["label/num_tokens"] > 8 and train["rationale/num_tokens"] > train["label/num_tokens"]
    np.testing.assert_allclose(train["loss"], 0.5 * train["label/loss"] + 0.5 * train["rationale/loss"], rtol=1e-5)
    cfg, params, vocab = checkpointing.load_params(tmp_path / "run")
    assert cfg.d_model == 32 and vocab.name == "spiece.model"
    assert params["token_embedder"]["embedding"].shape == (640, 32)


def _arith_flags(model_dir, *extra):
    return ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin", "--gin_file=datasets/arith.gin",
            f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.EVAL_EVERY=0",
            "--gin.COMPUTE_DTYPE='float32'", "--gin.model_config.d_model=32", "--gin.model_config.num_layers=1",
            "--gin.TrainConfig.eval_batch_size=200", *extra]


@pytest.mark.slow  # ~90 CPU-seconds: one train-step and four decode compilations
def test_cli_train_eval_infer_on_arith(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main.main(["train", *_arith_flags(run)]) == 0
    for name in ("config.gin", "model_config.json", "metrics.jsonl", "summary.json", "checkpoints/2",
                 "predictions/validation_step2.jsonl", "predictions/test_step2.jsonl"):
        assert (run / name).exists(), name
    assert list((run / "vocab").glob("*.model"))
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    operative = (run / "config.gin").read_text()
    assert "TrainConfig.train_steps = 2" in operative or "TRAIN_STEPS = 2" in operative
    # The run lists the examples of each split it was given, in order (selection.json).
    from sbs_jax.data.registry import register
    from sbs_jax.data.registry import selection

    manifest = json.loads((run / "selection.json").read_text())
    info = register.get_task_info("arith_ft")
    assert manifest["settings"]["task"] == "arith_ft" and set(manifest["splits"]) == set(info.split_data)
    for split, data in info.split_data.items():
        assert manifest["splits"][split]["inputs"] == [selection.input_hash(ex.input) for ex in data.examples]
    # ... and run.json how its rationales were read and filtered (here: the defaults).
    assert json.loads((run / "run.json").read_text())["rationales"] == {
        "sampling": "one_per_epoch", "filters": manifest["settings"]["rationale_filters"]}

    capsys.readouterr()
    assert train_main.main(["eval", "--gin_file=runs/eval.gin", "--gin_file=datasets/arith.gin",
                            f"--gin.MODEL_DIR='{run}'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
                            "--gin.EVAL_BATCH_SIZE=200", "--gin.RATIONALE_LENGTH=16"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in pathlib.Path(result["predictions"]).read_text().splitlines()]
    # Every example of the test split once (the trainer's registration of the embedded task, recounted).
    assert len(rows) == len(register.get_task_info("arith_ft").split_data["test"].examples) == result["num_examples"]
    # Independent recount: arith labels are integers, scored by exact match of the stripped strings.
    recount = 100.0 * sum(r["prediction"].strip() == r["gold"].strip() for r in rows) / len(rows)
    assert result["accuracy"] == pytest.approx(recount, abs=1e-9)
    assert sum(r["correct"] for r in rows) == round(recount * len(rows) / 100)

    # `sbs infer` on the eval split's first inputs (plain text, one per line, a blank line skipped) answers
    # what `sbs eval` answered for them: same prefix, tokens, lengths and greedy decoding.
    questions = tmp_path / "questions.txt"
    picked = rows[:24]
    questions.write_text("\n".join(r["input"] for r in picked[:12]) + "\n\n" +
                         "\n".join(r["input"] for r in picked[12:]) + "\n")
    out = tmp_path / "answers.jsonl"
    assert train_main.main(["infer", "--gin_file=runs/infer.gin", f"--gin.MODEL_DIR='{run}'",
                            f"--gin.INFER_INPUT='{questions}'", f"--gin.INFER_OUTPUT='{out}'",
                            "--gin.INPUT_LENGTH=64", "--gin.TARGET_LENGTH=8", "--gin.RATIONALE_LENGTH=16"]) == 0
    answers = [json.loads(x) for x in out.read_text().splitlines()]
    assert [a["input"] for a in answers] == [r["input"] for r in picked]
    assert [a["prediction"] for a in answers] == [r["prediction"] for r in picked]
    assert [a["rationale"] for a in answers] == [r["rationale"] for r in picked]
    assert len({r["rationale"] for r in picked}) > 1  # the decoded rows differ, so equality says something


def test_missing_required_macro_is_named(tmp_path, capsys):
    assert train_main.main(["train", "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin",
                            "--gin_file=datasets/arith.gin"]) == 2
    assert "MODEL_DIR" in capsys.readouterr().err
    assert train_main.main(["train", "--gin_file=runs/no_such_file.gin"]) == 2
    assert "no_such_file.gin" in capsys.readouterr().err


def test_gin_argument_rewriting_and_search_paths():
    assert gin_utils.rewrite_gin_args(["--gin.TRAIN_STEPS=5", "--gin_file=a.gin"]) == [
        "--gin_bindings=TRAIN_STEPS = 5", "--gin_file=a.gin"]
    with pytest.raises(ValueError, match="--gin.NAME=VALUE"):
        gin_utils.rewrite_gin_args(["--gin.TRAIN_STEPS"])
    assert any((pathlib.Path(p) / "runs" / "paper_t5_1_1_base.gin").is_file()
               for p in gin_utils.default_search_paths())


def test_paper_recipe_config(tmp_path):
    gin_utils.parse(["runs/paper_t5_1_1_base.gin", "datasets/cqa.gin"],
                    [f"MODEL_DIR = '{tmp_path}'", "INITIAL_CHECKPOINT_PATH = '/ckpt'",
                     "TASK_REGISTRATIONS = []"])
    config = gin_utils.build("TrainConfig")
    assert (config.batch_size, config.train_steps, config.eval_every) == (64, 10000, 250)
    assert config.optimizer.name == "adamw" and config.optimizer.learning_rate == 5e-5
    assert config.objective.alpha == 0.5 and config.objective.mode == "step_by_step"
    assert dict(config.task_feature_lengths) == {"inputs": 1024, "targets": 256, "rationales": 256}
    assert config.mixture_or_task_name == "cqa_sbs" and config.initial_checkpoint_path == "/ckpt"
    assert config.model.d_model == 768 and config.model.feed_forward_proj == "gated-gelu"


def _state(mesh, value):
    from jax.sharding import NamedSharding, PartitionSpec as P

    return {"w": jax.device_put(np.full((8, 4), value, np.float32), NamedSharding(mesh, P("data", None))),
            "step": jax.device_put(np.array(value, np.int32), NamedSharding(mesh, P()))}


def test_corrupted_latest_checkpoint_falls_back(tmp_path, capsys):
    from sbs_jax import partitioning

    mesh = partitioning.make_mesh()
    ckpt = checkpointing.Checkpointer(tmp_path, save_every=1, keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, _state(mesh, step), data_position=step, seed=0,
                  metrics={"accuracy": float(step % 3)})
    ckpt.wait()
    assert ckpt.best_step() == 2
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), _state(mesh, 0))
    # Truncate every data file of the newest checkpoint, as a crash mid-copy would.
    for f in (tmp_path / "3" / "state").rglob("d/*"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    state, meta = ckpt.restore(abstract)
    assert meta["step"] == 2 and float(state["w"][0, 0]) == 2.0
    out = capsys.readouterr().out
    assert "3 is truncated or corrupted" in out and "falling back to step 2" in out
    assert (tmp_path / "3.corrupt").is_dir() and ckpt.all_steps() == [1, 2]
    # A flipped byte that still decodes is caught by the checksum.
    ckpt.save(3, _state(mesh, 3), data_position=3, seed=0)
    ckpt.wait()
    for f in (tmp_path / "3" / "state").rglob("d/*"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    _, meta = ckpt.restore(abstract)
    assert meta["step"] == 2
    ckpt.close()
