"""bench/shared_prompt.py at tiny size: it compiles and times both steps and writes its table, in which the shared
step needs fewer FLOPs and tokens per example than the two-sequence step (no timing is asserted)."""
import re

from bench import shared_prompt


def test_writes_its_table(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert shared_prompt.main(["--tiny", "--padding", "batch_max", "--windows", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out
    assert text.startswith("Machine: ") and "| batch_max | two-sequence |" in text and "| batch_max | shared |" in text
    ratio = re.search(r"\| batch_max \| \*\*shared / two-sequence\*\* \| \| ([\d.]+) / ([\d.]+) \| \*\*([\d.]+)\*\* \| "
                      r"\*\*([\d.]+)\*\* \|", text)
    assert ratio, text
    real, padded, flops, seconds = (float(g) for g in ratio.groups())
    assert 0.4 < real < 0.9 and padded < 1 and flops < 1 and seconds > 0
