"""`sbs <verb> --help` and `sbs <verb> <sub-verb> --help` print usage and exit 0, for every verb of the CLI's table."""
import re

import pytest

from sbs_jax import cli


def _help(capsys, argv):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("verb", sorted(cli.COMMANDS))
def test_every_verb_prints_its_usage(verb, capsys):
    code, text = _help(capsys, [verb, "--help"])
    assert code == 0, text
    assert re.search(rf"usage: sbs {verb}\b", text), text
    # argparse lists its sub-verbs as {a,b}: every one must be in the table the sub-verb test walks.
    listed = re.findall(r"\{([\w,]+)\} \.\.\.", text.split("\n\n")[0])
    for group in listed:
        assert set(group.split(",")) <= set(cli.SUBCOMMANDS.get(verb, ())), (verb, group)


@pytest.mark.parametrize("verb,sub", sorted((v, s) for v, subs in cli.SUBCOMMANDS.items() for s in subs))
def test_every_sub_verb_prints_its_usage(verb, sub, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `sbs sweep report --help` must not treat --help as a directory
    code, text = _help(capsys, [verb, sub, "--help"])
    assert code == 0, text
    assert re.search(rf"usage: sbs {verb} {sub}\b", text), text
    assert not list(tmp_path.iterdir()), "a --help run wrote files"


def test_sub_verb_table_names_known_verbs():
    assert set(cli.SUBCOMMANDS) <= set(cli.COMMANDS)
