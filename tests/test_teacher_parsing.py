"""Teacher-output parsing and templates: the built-in specs reproduce the datasets README's numbers."""
import json

import pytest

from sbs_jax.data.records import formats
from sbs_jax.teacher.parsing import GoldSpec, ParseSpec, agrees, gold_label, label_key, parse_output, select_output
from sbs_jax.teacher.templates import BUILTIN, TemplateError, load_template

# /work/shared/datasets/README.md: unparseable outputs and teacher accuracy (parsed label = gold, in %).
README = [("cqa", "train", 9741, 3, 74.26), ("esnli", "valid", 9842, 4, 73.17), ("anli1", "valid", 1000, 9, 66.80),
          ("svamp", "train", 800, 13, 73.25), ("svamp", "test", 200, 2, 74.00)]


def shared_split(datasets_dir, name, split):
    examples = [json.loads(l) for l in (datasets_dir / name / f"{name}_{split}.json").read_text().splitlines()]
    files = sorted((datasets_dir / name / "llm").glob(f"{split}_CoT_*.json"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    outputs = [o for f in files for o in json.loads(f.read_text())]
    return examples, outputs


@pytest.mark.parametrize("name,split,count,failures,accuracy", README)
def test_builtin_specs_reproduce_readme(datasets_dir, name, split, count, failures, accuracy):
    template = load_template(name)
    examples, outputs = shared_split(datasets_dir, name, split)
    assert len(examples) == len(outputs) == count
    parsed = [parse_output(o, template.parse) for o in outputs]
    assert sum(p is None for p in parsed) == failures
    correct = sum(p is not None and agrees(p.label, gold_label(ex, template.gold), template.gold)
                  for p, ex in zip(parsed, examples))
    assert round(100 * correct / count, 2) == accuracy


@pytest.mark.parametrize("name,split", [(n, s) for n, s, *_ in README])
def test_builtin_specs_parse_like_the_tasks(datasets_dir, name, split):
    """The teacher and the tasks (sbs_jax.data.records.formats) split every paper output identically: the tasks parse
    with the one spec-driven parser and the built-in template's own spec."""
    spec, task_parse = load_template(name).parse, formats.get_format(name).parse_teacher
    assert task_parse.spec == spec
    _, outputs = shared_split(datasets_dir, name, split)
    for i, text in enumerate(outputs):
        ours, theirs = parse_output(text, spec), task_parse(text)
        assert (ours and (ours.rationale, ours.label)) == (theirs and (theirs.rationale, theirs.label)), i


def test_rules_on_hand_written_outputs():
    cqa, svamp, esnli, anli = (load_template(n).parse for n in ("cqa", "svamp", "esnli", "anli1"))
    p = parse_output("Birds fly. So the answer is (b) sky.\n\nQ: Where ... So the answer is (a) sea.", cqa)
    assert (p.rationale, p.label) == ("Birds fly.", "sky")
    assert parse_output("It is one of these. So the answer is one of these four.", cqa) is None  # no letter
    p = parse_output("3 + 4 is 7. The answer is (3 + 4).\n\nQ: x", svamp)
    assert p.label == "(3 + 4)"
    assert parse_output("3 + 4 is 7. The answer is (3 + 4", svamp) is None   # truncated equation
    p = parse_output("A dog is an animal.\nAnswer: entailment\n\nPremise: x\nAnswer: neutral", esnli)
    assert (p.rationale, p.label) == ("A dog is an animal.", "entailment")
    p = parse_output("He was born in 1990. So the answer is neutral.\n\nPremise: So the answer is x.", anli)
    assert (p.rationale, p.label) == ("He was born in 1990.", "neutral")
    assert parse_output(" So the answer is neutral.", anli) is None            # empty rationale


def test_numeric_gold_and_keys():
    numeric = GoldSpec(field="label", compare="numeric")
    assert agrees("(84 / 2)", "( 84.0 / 2.0 )", numeric) and agrees("((6 * 10) - 14)", "( 46.0 )", numeric)
    for bad in ("(84 - 2)", "(2 * x)", "(175, 5)", "(1 / 0)", "__import__('os')", "2 ** 3"):
        assert not agrees(bad, "( 84.0 / 2.0 )", numeric), bad
    assert label_key("(1 + 1)", numeric) == label_key("( 4.0 / 2.0 )", numeric) != label_key("(3)", numeric)
    assert label_key("(some - 8)", numeric) == "(some - 8)"              # not arithmetic: votes as text
    assert not agrees("Neutral", "neutral", GoldSpec(field="label"))
    nli = GoldSpec(field="label", names=("entailment", "neutral", "contradiction"))
    assert gold_label({"label": 2}, nli) == "contradiction"
    with pytest.raises(ValueError, match="outside the label names"):
        gold_label({"label": 3}, nli)
    with pytest.raises(KeyError, match="gold field 'label' missing"):
        gold_label({"lbl": 1}, nli)


def test_self_consistency_vote():
    spec, gold = ParseSpec(marker="=>"), GoldSpec(compare="numeric")
    sel = select_output(["a => (1 + 1)", "b => 3", "junk", "c => (4 / 2)", "d => 3"], spec, gold)
    # (1 + 1) and (4 / 2) are the same answer by value: 2 votes each for 2 and 3; the first seen wins the tie.
    assert (sel.index, sel.parsed.label, sel.votes) == (0, "(1 + 1)", {"(1 + 1)": 2, "3": 2})
    assert select_output(["junk", "more junk"], spec, gold).parsed is None


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_templates(name):
    t = load_template(name)
    assert 8 <= len(t.exemplars) <= 12 and t.stop and t.gold.field
    ex = {k: v for k, v in t.exemplars[0].items() if k not in ("rationale", "label")}
    prompt = t.prompt(ex)
    assert prompt.count(t.separator) == len(t.exemplars) + 1            # instruction + exemplars + query
    assert prompt.endswith(t.render_query(ex)) and not prompt.endswith(" ")
    msgs = t.messages(ex)
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * len(t.exemplars) + ["user"]
    # What the teacher is shown parses back to the exemplar's label with the template's own rules.
    for e in t.exemplars:
        parsed = parse_output(t.render_completion(e["rationale"], e["label"]), t.parse)
        assert parsed.rationale == e["rationale"] and parsed.label in e["label"]


def user_template(**over):
    raw = {"name": "sentiment", "instruction": "Is the review positive or negative?",
           "query": "Review: {text}\nAnswer:", "completion": " {rationale} Overall: {label}.",
           "stop": ["\n\nReview:"], "parse": {"cut_at": "Review:", "marker": "Overall:"},
           "gold": {"field": "label", "names": ["negative", "positive"]},
           "exemplars": [{"text": "Loved it.", "rationale": "Loving something is positive.", "label": "positive"}]}
    raw.update(over)
    return raw


def test_user_template_file(tmp_path):
    path = tmp_path / "sentiment.json"
    path.write_text(json.dumps(user_template()))
    t = load_template(str(path))
    assert t.prompt({"text": "Dull."}) == ("Is the review positive or negative?\n\nReview: Loved it.\nAnswer: Loving "
                                           "something is positive. Overall: positive.\n\nReview: Dull.\nAnswer:")
    assert parse_output(" Dull is bad. Overall: negative.\n\nReview: x", t.parse).label == "negative"
    assert gold_label({"text": "x", "label": 1}, t.gold) == "positive"
    with pytest.raises(TemplateError, match="cannot format example 7"):
        t.prompt({"body": "no text field"}, "example 7")


@pytest.mark.parametrize("over,match", [
    ({"exemplars": [{"text": "x", "rationale": "r", "label": "positive"}], "completion": " {rationale} {label}"},
     r"exemplars\[0\]: its completion does not parse back"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"parse": {"marker": "Overall:", "cutat": "x"}}, r"parse: unknown keys \['cutat'\]"),
    ({"gold": {"field": "label", "compare": "fuzzy"}}, "gold.compare must be"),
    ({"exemplars": [{"txt": "x", "rationale": "r", "label": "positive"}]}, r"cannot format exemplars\[0\]"),
    ({"exemplars": []}, "non-empty list"),
    ({"querry": "x"}, r"unknown keys \['querry'\]"),
])
def test_template_errors_name_the_field(tmp_path, over, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(user_template(**over)))
    with pytest.raises(TemplateError, match=match) as e:
        load_template(str(path))
    assert str(path) in str(e.value)


def test_template_file_errors(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"query": "x",\n "completion": }')
    with pytest.raises(TemplateError, match=r"broken.json: line 2 column 16: invalid JSON"):
        load_template(str(path))
    with pytest.raises(TemplateError, match="neither a built-in"):
        load_template(str(tmp_path / "missing.json"))
