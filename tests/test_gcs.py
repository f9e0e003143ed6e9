"""MODEL_DIR, checkpoints and exports on Cloud Storage, against a local GCS emulator (no internet).

The emulator (gcp-storage-emulator, in memory, on 127.0.0.1) serves the JSON API that both clients our code
reaches GCS through speak: gcsfs (etils.epath's fsspec backend: metadata, vocab, predictions, orbax's
directory operations) and TensorStore (orbax's array data, T5X zarr arrays). TensorFlow's own GCS client has
a fixed endpoint, so epath is switched to gcsfs here (EPATH_USE_TF=false) and TensorBoard and
tf.saved_model writes to gs:// are not exercised. Objects are checked with a separate gcsfs client.
"""
import json
import os
import socket

import gin
import jax
import numpy as np
import pytest
from etils import epath

from sbs_jax import paths
from sbs_jax.checkpoints import detect_format, load_hf, load_pretrained, load_t5x, save_hf
from sbs_jax.checkpoints.layout import flatten
from sbs_jax.model import get_config
from sbs_jax.commands import gin_utils
from sbs_jax.train import checkpointing, evaluation, objective, optim, progress, trainer

BUCKET = "sbs-test"
TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0, dtype="float32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_generation_headers(download):
    """Real GCS sends an object's generation with its bytes (`x-goog-generation`); TensorStore reads it to
    update OCDBT manifests, the emulator leaves it out. Only the JSON API media GET that TensorStore uses
    goes through the module attribute patched with this."""
    def wrapped(request, response, storage, *args, **kwargs):
        from gcp_storage_emulator.exceptions import NotFound

        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]
        except NotFound:
            pass  # `download` answers 404 itself
        return download(request, response, storage, *args, **kwargs)
    return wrapped


def _reset_gcs_clients():
    """Forget cached filesystems, so the next gs:// access connects to the current endpoint."""
    import gcsfs.core
    from etils.epath import backend, gpath

    gpath._is_tf_installed.cache_clear()  # noqa: SLF001 - epath reads EPATH_USE_TF once per process
    backend.fsspec_backend._get_filesystem.cache_clear()  # noqa: SLF001 - epath caches one fs per protocol
    gcsfs.core.GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """An in-memory GCS emulator with bucket BUCKET; yields a gcsfs client independent of epath."""
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(objects, "download", _with_generation_headers(objects.download))
        mp.setenv("STORAGE_EMULATOR_HOST", url)          # gcsfs
        mp.setenv("TENSORSTORE_GCS_HTTP_URL", url)       # TensorStore's gcs kvstore
        mp.setenv("GCE_METADATA_ROOT", "127.0.0.1:1")   # no metadata-server credentials: refused at once
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        mp.setenv("EPATH_USE_TF", "false")               # epath gs:// -> gcsfs, which honours the emulator
        # gcsfs's default (extended) filesystem first asks the gRPC storage-control API for each bucket's
        # layout, which the emulator does not serve (60 s of retries); this flag is read when gcsfs is imported.
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import fsspec
        import gcsfs

        assert fsspec.get_filesystem_class("gs") is gcsfs.core.GCSFileSystem, "gcsfs was imported before the fixture"
        mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
        _reset_gcs_clients()
        mp.chdir(tmp_path_factory.mktemp("cwd"))  # where a mangled `gs:/bucket/...` would land
        try:
            yield gcsfs.GCSFileSystem(token="anon")
        finally:
            _reset_gcs_clients()
            server.stop()


def _assert_nothing_local():
    assert not os.path.exists("gs:"), "a gs:// path was turned into a local gs:/ folder"


def test_local_and_remote_paths():
    assert str(paths.absolute("gs://b/x")) == "gs://b/x"
    assert str(paths.absolute("gs://b/x") / "checkpoints") == "gs://b/x/checkpoints"
    assert str(paths.absolute("run")) == os.path.join(os.getcwd(), "run")
    assert not paths.is_local("gs://b/x") and paths.is_local("/tmp/x") and paths.is_local("x")


def test_run_files_on_gcs(gcs, tmp_path):
    """Metadata, metrics (appended twice), predictions and the vocab copy land under gs://bucket/meta/."""
    from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib

    run = f"gs://{BUCKET}/meta"
    gin_utils.parse([], ["ObjectiveConfig.alpha = 0.25"])
    assert gin_utils.build("ObjectiveConfig").alpha == 0.25  # gin records only the bindings a run used
    config_path = gin_utils.write_operative_config(run)
    assert str(config_path) == f"{run}/config.gin"
    assert "ObjectiveConfig.alpha = 0.25" in gcs.cat(f"{BUCKET}/meta/config.gin").decode()

    writer = progress.MetricWriter(run, tensorboard=False)
    writer.write(1, {"loss": 2.5})
    writer.write(2, {"loss": 1.5}, "validation")
    writer.close()
    lines = [json.loads(x) for x in gcs.cat(f"{BUCKET}/meta/metrics.jsonl").decode().splitlines()]
    assert lines == [{"step": 1, "split": "train", "loss": 2.5}, {"step": 2, "split": "validation", "loss": 1.5}]

    evaluation.write_predictions(epath.Path(run) / "predictions" / "validation_step2.jsonl",
                                 [{"prediction": "5", "gold": "5"}, {"prediction": "é", "gold": "6"}])
    rows = gcs.cat(f"{BUCKET}/meta/predictions/validation_step2.jsonl").decode("utf-8").splitlines()
    assert [json.loads(r)["prediction"] for r in rows] == ["5", "é"]

    spm = vocab_lib.train_vocabulary(vocab_lib.model_texts(_arith_examples(300)), tmp_path, vocab_size=120)
    target = vocab_lib.copy_vocabulary(str(spm), f"{run}/vocab")
    assert str(target) == f"{run}/vocab/spiece.model"
    assert gcs.cat(f"{BUCKET}/meta/vocab/spiece.model") == spm.read_bytes()
    assert checkpointing.vocab_file(run) == target
    _assert_nothing_local()


def _arith_examples(n):
    from sbs_jax.data.records import arith

    return arith.generate_splits(seed=0)["train"][:n]


def _state(mesh, value):
    from jax.sharding import NamedSharding, PartitionSpec as P

    return {"w": jax.device_put(np.arange(32, dtype=np.float32).reshape(8, 4) * value,
                                NamedSharding(mesh, P("data", None))),
            "step": jax.device_put(np.array(value, np.int32), NamedSharding(mesh, P()))}


def test_checkpointer_on_gcs(gcs):
    """orbax through TensorStore's gcs kvstore: save two steps, restore the best, list them as objects."""
    from sbs_jax import partitioning

    mesh = partitioning.make_mesh()
    ckpt = checkpointing.Checkpointer(f"gs://{BUCKET}/ckpt", save_every=1, keep=2)
    assert str(ckpt.directory) == f"gs://{BUCKET}/ckpt"
    for step in (1, 2):
        ckpt.save(step, _state(mesh, step), data_position=step, seed=0, metrics={"accuracy": float(3 - step)})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2] and ckpt.best_step() == 1
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), _state(mesh, 0))
    state, meta = ckpt.restore(abstract, step=1)
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(32, dtype=np.float32).reshape(8, 4))
    assert meta["data_position"] == 1
    objects = gcs.find(f"{BUCKET}/ckpt")
    assert f"{BUCKET}/ckpt/2/meta/metadata" in objects
    assert any(o.startswith(f"{BUCKET}/ckpt/1/state/") for o in objects)
    assert checkpointing.choose_step(epath.Path(f"gs://{BUCKET}/ckpt")) == 1
    ckpt.close()
    _assert_nothing_local()


@pytest.mark.slow  # ~40 s: gcsfs first retries the emulator's unimplemented moveTo API for every object
def test_damaged_checkpoint_on_gcs_is_set_aside(gcs):
    """Truncated array data in the bucket: the restore falls back to the previous step and renames the damaged
    one `<step>.corrupt` (on GCS a copy and delete of every object under the prefix)."""
    from sbs_jax import partitioning

    mesh = partitioning.make_mesh()
    ckpt = checkpointing.Checkpointer(f"gs://{BUCKET}/damaged", save_every=1, keep=2)
    for step in (1, 2):
        ckpt.save(step, _state(mesh, step), data_position=step, seed=0)
    ckpt.wait()
    for name in gcs.find(f"{BUCKET}/damaged/2/state"):
        if "/d/" in name:
            gcs.pipe(name, gcs.cat(name)[:8])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), _state(mesh, 0))
    state, meta = ckpt.restore(abstract)
    assert meta["step"] == 1 and ckpt.all_steps() == [1]
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(32, dtype=np.float32).reshape(8, 4))
    ckpt.close()
    gcs.invalidate_cache()
    assert gcs.exists(f"{BUCKET}/damaged/2.corrupt/meta/metadata")
    assert not gcs.exists(f"{BUCKET}/damaged/2/meta/metadata")
    _assert_nothing_local()


def test_hf_and_t5x_checkpoints_on_gcs(gcs, t5x_tiny_checkpoint, tmp_path):
    """An HF directory written to and read from gs://, and a T5X directory-form checkpoint whose zarr arrays
    TensorStore reads from the bucket; both equal the local originals."""
    import tensorstore as ts
    from flax import serialization

    config, params = load_t5x(t5x_tiny_checkpoint)
    hf_gs = f"gs://{BUCKET}/hf"
    save_hf(hf_gs, config, params)
    save_hf(tmp_path / "hf", config, params)
    assert gcs.cat(f"{BUCKET}/hf/model.safetensors") == (tmp_path / "hf" / "model.safetensors").read_bytes()
    assert detect_format(hf_gs) == "hf"
    _, params_hf = load_pretrained(hf_gs)
    _assert_same(params_hf, params)

    # T5X directory form: 2-D arrays as zarr folders beside the msgpack, specs relative to the step folder.
    target = {}
    for name, value in flatten(params).items():
        if value.ndim >= 2:
            rel = "target." + name.replace("/", ".")
            spec = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": rel},
                    "metadata": {"shape": list(value.shape), "chunks": list(value.shape)}}
            written = dict(spec, kvstore=f"gs://{BUCKET}/t5x/checkpoint_5/{rel}")
            ts.open(written, create=True, open=True).result().write(value).result()
            value = spec
        node = target
        for part in name.split("/")[:-1]:
            node = node.setdefault(part, {})
        node[name.split("/")[-1]] = value
    gcs.pipe(f"{BUCKET}/t5x/checkpoint_5/checkpoint",
             serialization.msgpack_serialize({"version": 3, "optimizer": {"target": target, "state": {}}}))
    assert detect_format(f"gs://{BUCKET}/t5x") == "t5x"
    config_t5x, params_t5x = load_t5x(f"gs://{BUCKET}/t5x")
    assert config_t5x == config
    _assert_same(params_t5x, params)
    _assert_nothing_local()


def _assert_same(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def _train_config(model_dir, steps):
    from sbs_jax import tasks

    tasks.register_arith_tasks()
    return trainer.TrainConfig(
        model_dir=str(model_dir), mixture_or_task_name="arith_sbs",
        task_feature_lengths={"inputs": 48, "targets": 4, "rationales": 20}, train_steps=steps, batch_size=8,
        model=get_config("t5_1_1_tiny", vocab_size=512, **TINY),
        optimizer=optim.OptimizerConfig(learning_rate=1e-3), objective=objective.ObjectiveConfig(alpha=0.5),
        validation_split=None, test_split=None, save_every=2, log_every=1, tensorboard=False)


@pytest.mark.slow  # 140-200 s on 2 shared cores: three short training runs and three exports
def test_train_resume_load_and_export_on_gcs(gcs, tmp_path, capsys):
    """A run with MODEL_DIR=gs://, resumed from its gs:// checkpoint, ends bit-identical to one uninterrupted
    local run; load_params and `sbs export --format hf` read it back (to a local and a gs:// output)."""
    from sbs_jax.commands import export as export_cli

    run = f"gs://{BUCKET}/run"
    assert trainer.train(_train_config(run, 2))["final_step"] == 2
    summary = trainer.train(_train_config(run, 4))
    assert f"resumed from {run}/checkpoints/2" in capsys.readouterr().out
    # Timing fields (steps/s, CPU s per step) differ from run to run; the rest is the run's result.
    timing = {"train_steps_per_s", "train_cpu_s_per_step"}
    assert timing <= set(summary)
    assert {k: v for k, v in summary.items() if k not in timing} == {"model_dir": run, "final_step": 4,
                                                                      "validation": {}}
    trainer.train(_train_config(tmp_path / "local", 4))

    objects = set(gcs.find(f"{BUCKET}/run"))
    for name in ("model_config.json", "summary.json", "metrics.jsonl", "vocab/spiece.model",
                 "checkpoints/2/meta/metadata", "checkpoints/4/meta/metadata"):
        assert f"{BUCKET}/run/{name}" in objects, name
    steps = [json.loads(x)["step"] for x in gcs.cat(f"{BUCKET}/run/metrics.jsonl").decode().splitlines()]
    assert steps == [1, 2, 3, 4]  # both runs' lines: appends are not lost on an object store

    config, params, vocab = checkpointing.load_params(run)
    local_config, local_params, _ = checkpointing.load_params(tmp_path / "local")
    assert str(vocab) == f"{run}/vocab/spiece.model" and config == local_config
    _assert_same(params, local_params)

    assert export_cli.main(["--checkpoint", run, "--format", "hf", "--output", str(tmp_path / "hf")]) == 0
    assert export_cli.main(["--checkpoint", run, "--format", "hf", "--output", f"gs://{BUCKET}/hf_export"]) == 0
    for name in ("model.safetensors", "config.json", "generation_config.json", "spiece.model",
                 "tokenizer_config.json", "tokenizer.json", "sbs_serving.json"):
        assert gcs.cat(f"{BUCKET}/hf_export/{name}") == (tmp_path / "hf" / name).read_bytes(), name
    _, exported = load_hf(f"gs://{BUCKET}/hf_export")
    _assert_same(exported, params)

    # StableHLO written to gs:// and served from there, as from a local copy of the same objects.
    from sbs_jax.export.stablehlo import StableHLOStudent

    assert export_cli.main(["--checkpoint", run, "--format", "stablehlo", "--output", f"gs://{BUCKET}/shlo",
                            "--max_input_length", "48", "--max_label_length", "4"]) == 0
    gcs.get(f"{BUCKET}/shlo/", str(tmp_path / "shlo"), recursive=True)
    texts = [ex.input for ex in _arith_examples(3)]
    served = StableHLOStudent(f"gs://{BUCKET}/shlo").predict(texts)
    assert served == StableHLOStudent(tmp_path / "shlo").predict(texts) and len(served["label"]) == 3
    _assert_nothing_local()


def test_hf_tokenizer_files_on_gcs(gcs, tmp_path):
    """The HF export's tokenizer files, built from a gs:// SentencePiece model and written to gs://, are the
    bytes a local export writes."""
    from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib
    from sbs_jax.export.hf_tokenizer import write_tokenizer_files

    spm = vocab_lib.train_vocabulary(vocab_lib.model_texts(_arith_examples(300)), tmp_path / "v", vocab_size=120,
                                     model_type="bpe")
    gcs.pipe(f"{BUCKET}/tok/spiece.model", spm.read_bytes())
    write_tokenizer_files(tmp_path, spm, model_max_length=64)
    write_tokenizer_files(f"gs://{BUCKET}/tok", f"gs://{BUCKET}/tok/spiece.model", model_max_length=64)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert gcs.cat(f"{BUCKET}/tok/{name}") == (tmp_path / name).read_bytes(), name
    _assert_nothing_local()


def _svamp_copy(gcs, datasets_dir, root):
    """A small copy of svamp in the official layout (first 40 train / 20 test examples and their teacher
    outputs, two llm/ chunks for train), written under `root` and to gs://BUCKET/data; returns both dirs."""
    source = datasets_dir / "svamp"
    train_outputs = [o for i in (0, 1) for o in json.loads((source / "llm" / f"train_CoT_{i}.json").read_text())]
    files = {
        "svamp_train.json": "".join(l + "\n" for l in (source / "svamp_train.json").read_text().splitlines()[:40]),
        "svamp_test.json": "".join(l + "\n" for l in (source / "svamp_test.json").read_text().splitlines()[:20]),
        "llm/train_CoT_0.json": json.dumps(train_outputs[:25]), "llm/train_CoT_1.json": json.dumps(train_outputs[25:40]),
        "llm/test_CoT_0.json": json.dumps(json.loads((source / "llm" / "test_CoT_0.json").read_text())[:20]),
    }
    for name, text in files.items():
        (root / "svamp" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "svamp" / name).write_text(text, encoding="utf-8")
        gcs.pipe(f"{BUCKET}/data/svamp/{name}", text.encode("utf-8"))
    return str(root), f"gs://{BUCKET}/data"


def _source_columns(task):
    import seqio

    source = seqio.get_mixture_or_task(task).source
    return {split: source._columns[split] for split in source.splits}  # noqa: SLF001 - the registered examples


def test_data_dir_user_task_and_teacher_outputs_on_gcs(gcs, datasets_dir, tmp_path):
    """A paper dataset (examples + llm/ teacher outputs) and a user JSONL task read from gs:// register the same
    examples, rationales and teacher statistics as their local copies."""
    from sbs_jax import tasks
    from sbs_jax.data.records import data_dir as records
    from sbs_jax.data.registry import register
    from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib

    spm = vocab_lib.train_vocabulary(vocab_lib.model_texts(_arith_examples(300)), tmp_path, vocab_size=120)
    local_dir, remote = _svamp_copy(gcs, datasets_dir, tmp_path / "data")
    local_split = records.read_split(local_dir, "svamp", "train")
    remote_split = records.read_split(remote, "svamp", "train")
    assert local_split.has_teacher and len(local_split.examples) == 40
    assert remote_split.examples == local_split.examples and remote_split.has_teacher
    assert (remote_split.parse_failures, remote_split.teacher_correct) == (local_split.parse_failures,
                                                                           local_split.teacher_correct)
    assert records.list_splits(remote, "svamp") == ["test", "train"]
    tasks.register_paper_tasks(local_dir, datasets=["svamp"], vocabulary=str(spm))
    local = _source_columns("svamp_sbs")
    assert "svamp_sbs" in tasks.register_paper_tasks(remote, vocabulary=str(spm))   # datasets found on gs://
    jax.tree.map(np.testing.assert_array_equal, local, _source_columns("svamp_sbs"))

    rows = [{"input": f"q {i}", "label": str(i % 3), "rationale": f"because {i}"} for i in range(12)]
    gcs.pipe(f"{BUCKET}/user/train.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    register.register_jsonl_task("mine", {"train": str(tmp_path / "train.jsonl")}, vocabulary=str(spm))
    local = _source_columns("mine_sbs")
    register.register_jsonl_task("mine", {"train": f"gs://{BUCKET}/user/train.jsonl"}, vocabulary=str(spm))
    jax.tree.map(np.testing.assert_array_equal, local, _source_columns("mine_sbs"))
    with pytest.raises(records.DataError, match=f"gs://{BUCKET}/user/missing.jsonl: file not found"):
        register.register_jsonl_task("gone", {"train": f"gs://{BUCKET}/user/missing.jsonl"}, vocabulary=str(spm))
    with pytest.raises(records.DataError, match=f"data dir gs://{BUCKET}/nothing does not exist"):
        tasks.register_paper_tasks(f"gs://{BUCKET}/nothing", vocabulary=str(spm))
    _assert_nothing_local()


@pytest.mark.slow  # 20-50 s on 2 shared cores: two seqio pipelines
def test_paper_task_batches_from_gcs_equal_local(gcs, datasets_dir, tmp_path):
    """Training batches of a step-by-step paper task registered from gs:// equal those from the local copy."""
    from sbs_jax import tasks
    from sbs_jax.data.input_pipeline import pipeline
    from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib

    def batches():
        ds = pipeline.get_train_dataset("svamp_sbs", batch_size=4, shuffle=True, seed=3, num_epochs=1,
                                        task_feature_lengths={"inputs": 64, "targets": 8, "rationales": 32})
        return [b for b, _ in zip(ds.as_numpy_iterator(), range(3))]

    spm = vocab_lib.train_vocabulary(vocab_lib.model_texts(_arith_examples(300)), tmp_path, vocab_size=120)
    local_dir, remote = _svamp_copy(gcs, datasets_dir, tmp_path / "data")
    tasks.register_paper_tasks(local_dir, datasets=["svamp"], vocabulary=str(spm))
    local = batches()
    tasks.register_paper_tasks(remote, datasets=["svamp"], vocabulary=str(spm))
    remote_batches = batches()
    assert len(local) == len(remote_batches) == 3
    assert local[0]["rationale"]["decoder_loss_weights"].sum() > 0        # teacher rationales were read
    jax.tree.map(np.testing.assert_array_equal, local, remote_batches)


def test_teacher_generate_reads_and_writes_gcs(gcs, datasets_dir, tmp_path, monkeypatch, capsys):
    """`sbs teacher generate` from a gs:// data dir to a gs:// --out: the same files as a local run, and a
    resumable journal kept locally."""
    from sbs_jax.data.records import data_dir as records
    from sbs_jax.commands import teacher as cli
    from sbs_jax.teacher.templates import load_template
    from teacher_fake_server import FakeTeacher

    lines = (datasets_dir / "anli1" / "anli1_valid.json").read_text(encoding="utf-8").splitlines()[:6]
    outputs = json.loads((datasets_dir / "anli1" / "llm" / "valid_CoT_0.json").read_text())[:6]
    gcs.pipe(f"{BUCKET}/tdata/anli1/anli1_valid.json", "".join(l + "\n" for l in lines).encode())
    template = load_template("anli1")
    answers = {template.render_query(json.loads(l)): o for l, o in zip(lines, outputs)}
    monkeypatch.setenv("SBS_CACHE_DIR", str(tmp_path / "cache"))
    args = ["generate", "--task", "anli1", "--split", "valid", "--model", "t", "--chunk_size", "4",
            "--concurrency", "2", "--log_level", "WARNING"]
    with FakeTeacher(answers) as server:
        assert cli.main([*args, "--endpoint", server.url, "--data_dir", f"gs://{BUCKET}/tdata",
                         "--out", f"gs://{BUCKET}/tout"]) == 0
        assert cli.main([*args, "--endpoint", server.url, "--data_dir", f"gs://{BUCKET}/tdata",
                         "--out", str(tmp_path / "local")]) == 0
    names = ["anli1_valid.json", "llm/valid_CoT_0.json", "llm/valid_CoT_1.json", "teacher_valid.jsonl",
             "teacher_valid_summary.json"]
    for name in names:
        assert gcs.cat(f"{BUCKET}/tout/anli1/{name}") == (tmp_path / "local" / "anli1" / name).read_bytes(), name
    assert not gcs.exists(f"{BUCKET}/tout/anli1/teacher_valid.journal.jsonl")   # the journal stays local
    assert len(list((tmp_path / "cache" / "teacher").rglob("teacher_valid.journal.jsonl"))) == 1
    # What was written to gs:// is a data dir the trainer reads.
    split = records.read_split(f"gs://{BUCKET}/tout", "anli1", "valid")
    assert split.has_teacher and len(split.examples) == 6
    _assert_nothing_local()
