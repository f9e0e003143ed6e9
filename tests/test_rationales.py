"""Several rationales per example: per-epoch picking, 'all', filters and their counts, the layouts' errors.

A JSONL task whose rationale texts name their example and index ("ex 7 r 2") lets every test read back from
the batches which rationale of which example a row trained on.
"""
import collections
import itertools
import json

import numpy as np
import pytest
import seqio

from sbs_jax.data.input_pipeline import pipeline, rationale_picking
from sbs_jax.data.records import data_dir as records
from sbs_jax.data.records import teacher_samples
from sbs_jax.data.records.data_dir import DataError, Example, Rationale, SplitData
from sbs_jax.data.registry import rationale_filters as filters_lib
from sbs_jax.data.registry import register
from sbs_jax.data.vocab import sentencepiece_vocab as vocab_lib
from sbs_jax.train import inputs

N = 24                      # examples; example i has 1 + i % 4 rationales
LENGTHS = {"inputs": 40, "targets": 24, "rationales": 32}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _num(n: int) -> str:
    return " ".join(WORDS[int(d)] for d in str(n))


def _rows(n=N):
    return [{"input": f"question {_num(i)}", "label": f"answer {_num(i)}",
             "rationale": [f"ex {_num(i)} r {_num(j)}" for j in range(1 + i % 4)]} for i in range(n)]


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    texts = [t for r in _rows() for t in (r["input"], r["label"], *r["rationale"])] + ["predict: explain:"] * 5
    return str(vocab_lib.train_vocabulary(texts, tmp_path_factory.mktemp("spm"), vocab_size=60, seed=0))


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("jsonl") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return str(path)


def _register(jsonl, spm, sampling="one_per_epoch", name="multi"):
    register.register_jsonl_task(name, {"train": jsonl}, vocabulary=spm, rationale_sampling=sampling)
    return f"{name}_sbs"


def _decode(vocab, ids) -> str:
    ids = [int(t) for t in ids if t > 1]
    return vocab.decode(ids)


def _picks(task, spm, batches, n_batches):
    """[(example, rationale index)] of every row, read back from the rationale targets."""
    vocab = vocab_lib.load_vocabulary(spm)
    out = []
    for batch in itertools.islice(batches, n_batches):
        for row in batch["rationale"]["decoder_target_tokens"]:
            words = _decode(vocab, row).split()
            r = words.index("r")
            out.append((int("".join(str(WORDS.index(w)) for w in words[1:r])),
                        int("".join(str(WORDS.index(w)) for w in words[r + 1:]))))
    return out


def test_pick_is_a_function_of_seed_epoch_and_example_and_covers_every_rationale():
    counts = np.array([1, 2, 3, 4, 7] * 4)
    examples = np.arange(len(counts)) * 1000 + 5
    picks = np.stack([rationale_picking.pick(3, np.full(len(counts), e), examples, counts) for e in range(28)])
    assert (picks < counts).all() and (picks >= 0).all()
    # Every block of k epochs visits each of an example's k rationales once.
    for j, k in enumerate(counts):
        for block in range(28 // k):
            assert sorted(picks[block * k:(block + 1) * k, j]) == list(range(k)), (j, block)
    # A function of its arguments only (order and batch composition do not matter) ...
    again = rationale_picking.pick(3, np.full(5, 9), examples[::-1][:5], counts[::-1][:5])
    assert again.tolist() == picks[9][::-1][:5].tolist()
    # ... and of the seed: another seed picks differently somewhere.
    other = np.stack([rationale_picking.pick(4, np.full(len(counts), e), examples, counts) for e in range(28)])
    assert (other != picks).any()


def test_one_per_epoch_trains_each_example_once_per_epoch_with_a_seeded_rationale(jsonl, spm):
    task = _register(jsonl, spm)
    assert register.get_task_info(task).picks_rationales("train")
    batches = pipeline.train_batches(task, task_feature_lengths=LENGTHS, batch_size=4, seed=1, num_epochs=8,
                                     shuffle=True)
    picks = _picks(task, spm, batches, 8 * N // 4)
    # Shuffling spans epoch boundaries, so count by example: 8 visits each, and over the first 4 epochs' picks
    # (blocks of k) every rationale of an example with k | 4 is seen.
    visits = collections.defaultdict(list)
    for ex, r in picks:
        visits[ex].append(r)
    assert sorted(visits) == list(range(N)) and all(len(v) == 8 for v in visits.values())
    for ex, rs in visits.items():
        k = 1 + ex % 4
        assert set(rs) == set(range(k)), (ex, rs)
    # Another seed changes the picks (determinism for one seed: the shard and resume test below).
    other = _picks(task, spm, pipeline.train_batches(task, task_feature_lengths=LENGTHS, batch_size=4, seed=2,
                                                     num_epochs=8), 8 * N // 4)
    assert other != picks


@pytest.mark.slow  # ~20-100 s: seven pipelines (shards, packing, the trainer's resumed stream)
def test_picks_are_the_same_for_every_shard_count_and_with_packing_and_resume_exactly(jsonl, spm):
    task = _register(jsonl, spm)
    kw = dict(task_feature_lengths=LENGTHS, shuffle=False, num_epochs=6, seed=5)
    whole = _picks(task, spm, pipeline.train_batches(task, batch_size=4, **kw), 6 * N // 4)
    # Unshuffled, epoch e is the examples in order; the rationale of (e, i) must not depend on the shards.
    by_epoch = {(e, ex): r for e in range(6) for ex, r in whole[e * N:(e + 1) * N]}
    for shards in (2,):
        for index in range(shards):
            got = _picks(task, spm, pipeline.train_batches(
                task, batch_size=4 * shards, shard_info=seqio.ShardInfo(index, shards), **kw), 6 * N // (4 * shards))
            mine = N // shards
            for e in range(6):
                for ex, r in got[e * mine:(e + 1) * mine]:
                    assert ex % shards == index and by_epoch[(e, ex)] == r, (shards, index, e, ex)
    # Packed rows hold the same rationale sequence (the segments in row order).
    vocab = vocab_lib.load_vocabulary(spm)
    packed = pipeline.train_batches(task, batch_size=2, pack=True, **kw)
    segments = []
    for batch in packed:
        rows = batch["packed"]
        for tokens, seg, stream in zip(rows["decoder_target_tokens"], rows["decoder_segment_ids"],
                                       rows["decoder_stream_ids"]):
            for s in np.unique(seg[(stream == 2)]):
                segments.append(_decode(vocab, tokens[(seg == s) & (stream == 2)]))
    unpacked_texts = [f"ex {_num(ex)} r {_num(r)}" for ex, r in whole]
    assert segments[:len(unpacked_texts) - 8] == unpacked_texts[:len(unpacked_texts) - 8]
    # Resume: the trainer's stream from batch k is the tail of the stream from 0 (shuffled, endless).
    full = inputs.train_batches(task, task_feature_lengths=LENGTHS, batch_size=4, seed=7, streams=("label", "rationale"))
    head = list(itertools.islice(full, 40))
    tail = inputs.train_batches(task, task_feature_lengths=LENGTHS, batch_size=4, seed=7,
                                streams=("label", "rationale"), start_batch=31)
    for want, got in zip(head[31:], itertools.islice(tail, 9)):
        np.testing.assert_array_equal(want["rationale"]["decoder_target_tokens"],
                                      got["rationale"]["decoder_target_tokens"])


@pytest.mark.slow  # ~15-70 s: the tf.data path too
def test_all_trains_every_example_rationale_pair_once_per_epoch_with_its_label(jsonl, spm):
    task = _register(jsonl, spm, sampling="all", name="multi_all")
    info = register.get_task_info(task)
    assert not info.picks_rationales("train") and info.settings()["rationale_sampling"] == "all"
    pairs = sum(1 + i % 4 for i in range(N))
    for backend in ("numpy", "tf.data"):
        batches = list(pipeline.train_batches(task, task_feature_lengths=LENGTHS, batch_size=1, seed=3,
                                              num_epochs=1, backend=backend))
        picks = _picks(task, spm, iter(batches), pairs)
        assert sorted(picks) == sorted((i, j) for i in range(N) for j in range(1 + i % 4)), backend
        vocab = vocab_lib.load_vocabulary(spm)
        labels = [_decode(vocab, b["label"]["decoder_target_tokens"][0]) for b in batches]
        assert labels == [f"answer {_num(ex)}" for ex, _ in picks]  # each pair carries its example's label


def test_one_per_epoch_refuses_the_tf_data_path(jsonl, spm):
    task = _register(jsonl, spm)
    with pytest.raises(ValueError, match="one_per_epoch"):
        pipeline.get_train_dataset(task, task_feature_lengths=LENGTHS, batch_size=4)


def _split(examples, split="train", labels=True):
    return SplitData("t", split, examples, has_teacher=True, source="t.jsonl", has_teacher_labels=labels)


def test_each_filter_count_equals_a_recount():
    rng = np.random.default_rng(0)
    examples = []
    for i in range(60):
        cands = []
        for _ in range(rng.integers(1, 5)):
            kind = rng.integers(0, 5)
            text = ["", "short", "a b c d e", "a b c d e f g h i j k l m n o", "a b c d e"][kind]
            cands.append(Rationale(text, "" if not text else str(rng.integers(0, 2))))
        examples.append(Example(f"q{i}", "1").with_candidates(cands))
    data = _split(examples)
    filters = filters_lib.RationaleFilters(agree_with_gold=True, drop_unparsed=True, min_words=2, max_tokens=10,
                                           drop_duplicates=True)
    count_tokens = lambda texts: [len(t.split()) + 1 for t in texts]  # noqa: E731 - a word per token, + EOS
    out = filters_lib.apply_filters(data, filters, "exact_match", count_tokens=count_tokens)
    # Recount, filter by filter, in the documented order.
    c = [list(ex.candidates()) for ex in examples]
    recount = {}
    for name, keep in (("unparsed", lambda r: r.text),
                       ("disagree_with_gold", lambda r: r.text and r.teacher_label == "1"),
                       ("too_short", lambda r: len(r.text.split()) >= 2),
                       ("too_long", lambda r: len(r.text.split()) + 1 <= 10)):
        before = sum(map(len, c))
        c = [[r for r in cs if keep(r)] for cs in c]
        recount[name] = before - sum(map(len, c))
    before = sum(map(len, c))
    c = [list(dict.fromkeys(cs)) for cs in c]
    recount["duplicate"] = before - sum(map(len, c))
    counts = out.filter_counts
    assert counts["removed"] == recount and all(v > 0 for v in recount.values())
    assert counts["rationales_after"] == sum(map(len, c))
    assert counts["examples_without_rationale"] == sum(not cs for cs in c)
    assert [[r.text for r in ex.candidates() if r.text] for ex in out.examples] == [[r.text for r in cs] for cs in c]
    # Dropping examples without one: only from the train split.
    drop = filters_lib.RationaleFilters(agree_with_gold=True, without_rationale="drop")
    kept = filters_lib.apply_filters(data, drop, "exact_match")
    assert len(kept.examples) == 60 - kept.filter_counts["examples_dropped"] > 0
    valid = filters_lib.apply_filters(_split(examples, "validation"), drop, "exact_match")
    assert len(valid.examples) == 60 and valid.filter_counts["examples_dropped"] == 0


def test_a_filter_that_leaves_no_rationale_names_itself_and_the_split():
    examples = [Example(f"q{i}", "1", f"why {i}", "2") for i in range(5)]
    with pytest.raises(DataError, match=r"train: filter 'disagree_with_gold' leaves none of the split's 5"):
        filters_lib.apply_filters(_split(examples), filters_lib.RationaleFilters(agree_with_gold=True),
                                  "exact_match", task="mine")
    with pytest.raises(DataError, match="needs the teacher's labels"):
        filters_lib.apply_filters(_split(examples, labels=False), filters_lib.RationaleFilters(agree_with_gold=True),
                                  "exact_match")
    with pytest.raises(ValueError, match="unknown filter"):
        filters_lib.RationaleFilters.from_setting({"agree": True})


def test_registered_filters_are_recorded_in_settings_and_selection_manifest(jsonl, spm, tmp_path, capsys):
    from sbs_jax.data.registry import selection

    vocab = vocab_lib.load_vocabulary(spm)
    lengths = sorted(len(vocab.encode(t)) + 1 for r in _rows() for t in r["rationale"])
    limit = lengths[-1] - 1  # the longest go, the others stay
    register.register_jsonl_task("filt", {"train": jsonl}, vocabulary=spm,
                                 rationale_filters={"min_words": 4, "max_tokens": limit})
    note = capsys.readouterr().out
    counts = register.get_task_info("filt_sbs").settings()["rationale_filter_counts"]["train"]
    assert f"note: filt train: {filters_lib.describe(counts)}" in note
    assert counts["removed"]["too_short"] == 0 and counts["rationales_before"] == len(lengths)
    assert counts["removed"]["too_long"] == sum(n > limit for n in lengths) > 0
    selection.write_task_selection_manifest(tmp_path, "filt_sbs")
    settings = selection.read_selection_manifest(tmp_path)["settings"]
    assert settings["rationale_filters"]["max_tokens"] == limit and settings["rationale_filter_counts"]["train"] == counts


def test_samples_layout_errors_name_file_and_line(tmp_path):
    path = tmp_path / "train_samples.jsonl"
    for text, needle in (('{"completions": ["a"]}\n{"outputs": ["b"]}\n', ":2: expected an object"),
                         ('{"completions": []}\n', ":1: 'completions' must be a non-empty list"),
                         ('{"completions": ["a", 3]}\n', ":1: completion 1 is int"),
                         ('{"completions": ["a"]}\n\n', ":2: blank line")):
        path.write_text(text)
        with pytest.raises(DataError, match=str(path) + needle):
            teacher_samples.read_samples(path)
    path.write_text(teacher_samples.samples_text([["x", "y"], ["z"]]))
    assert teacher_samples.read_samples(path) == [["x", "y"], ["z"]]


def test_samples_count_must_match_the_examples(tmp_path, datasets_dir):
    folder = tmp_path / "svamp"
    (folder / "llm").mkdir(parents=True)
    lines = (datasets_dir / "svamp" / "svamp_test.json").read_text().splitlines()[:3]
    (folder / "svamp_test.json").write_text("\n".join(lines) + "\n")
    (folder / "llm" / "test_samples.jsonl").write_text(teacher_samples.samples_text([["a"], ["b"]]))
    with pytest.raises(DataError, match="2 lines of teacher samples for 3 examples"):
        records.read_split(tmp_path, "svamp", "test", teacher_outputs="samples")
