"""Training on a SeqIO mixture evaluates each of its tasks (T5X's behaviour), with one number for the best."""
import json

import numpy as np
import pytest
import seqio

from sbs_jax.data.records import arith
from sbs_jax.data.registry import register
from sbs_jax.data.vocab import sentencepiece_vocab as vocab
from sbs_jax.model import get_config
from sbs_jax.train import objective, optim, trainer

TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0, dtype="float32")


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    examples = arith.generate_splits(seed=0, sizes={"train": 300})["train"]
    spiece = vocab.train_vocabulary(vocab.model_texts(examples), tmp_path_factory.mktemp("vocab"), vocab_size=200)
    # Two tasks of one kind with different validation sizes, so a per-task mix-up shows in the counts.
    register.register_examples_task("mixa", {"train": examples[:64], "validation": examples[64:76]},
                                    vocabulary=str(spiece), variants=("sbs",))
    register.register_examples_task("mixb", {"train": examples[100:164], "validation": examples[164:184]},
                                    vocabulary=str(spiece), variants=("sbs",))
    seqio.MixtureRegistry.remove("mixa_mixb")
    seqio.MixtureRegistry.add("mixa_mixb", [("mixa_sbs", 1.0), ("mixb_sbs", 1.0)])
    return {"mixa_sbs": examples[64:76], "mixb_sbs": examples[164:184]}


@pytest.mark.slow  # a real 2-step run with decoding of two tasks: ~1 CPU-minute plus compilation
def test_mixture_is_evaluated_per_task(mixture, tmp_path):
    assert trainer.eval_task_names("mixa_mixb") == ["mixa_sbs", "mixb_sbs"]
    assert trainer.eval_task_names("mixa_sbs") == ["mixa_sbs"]
    run = tmp_path / "run"
    config = trainer.TrainConfig(
        model_dir=str(run), mixture_or_task_name="mixa_mixb",
        task_feature_lengths={"inputs": 48, "targets": 8, "rationales": 32}, train_steps=2, batch_size=8,
        model=get_config("t5_1_1_tiny", vocab_size=256, **TINY), optimizer=optim.OptimizerConfig(learning_rate=1e-3),
        objective=objective.ObjectiveConfig(alpha=0.5), test_split=None, eval_batch_size=16, save_every=2,
        tensorboard=False)
    summary = trainer.train(config)
    val = summary["validation"]
    for task, examples in mixture.items():
        rows = [json.loads(x) for x in (run / "predictions" / task / "validation_step2.jsonl").read_text().splitlines()]
        assert [r["input"] for r in rows] == [ex.input for ex in examples]  # this task's split, in order
        recount = 100.0 * sum(r["prediction"].strip() == r["gold"].strip() for r in rows) / len(rows)
        assert val[f"{task}/accuracy"] == pytest.approx(recount)
        assert val[f"{task}/num_examples"] == len(examples)
        assert np.isfinite(val[f"{task}/label/loss"]) and np.isfinite(val[f"{task}/rationale/loss"])
    assert val["accuracy"] == pytest.approx((val["mixa_sbs/accuracy"] + val["mixb_sbs/accuracy"]) / 2)
    assert val["num_examples"] == 32
    assert summary["best_step"] == 2
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(x["split"] == "validation" and "mixb_sbs/accuracy" in x for x in logged)
