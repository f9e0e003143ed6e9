"""Teacher rationale generation for a data dir, resumable, written in the official datasets.zip layout.

<out>/<name>/<name>_<split>.json          the examples (kept ones, as they were), JSON lines
<out>/<name>/llm/<split>_CoT_<i>.json     the teacher completions, `chunk_size` per file, 1:1 with the examples
                                          (the majority-vote one with --num_samples > 1)
<out>/<name>/llm/<split>_samples.jsonl    every completion drawn, one line per example (`{"completions": [...]}`,
                                          sbs_jax.data.records.teacher_samples), 1:1 with the examples
<out>/<name>/teacher_<split>.jsonl        one record per input example, in order (prompt, outputs, parse, status)
<out>/<name>/teacher_<split>_summary.json counts, teacher accuracy, rationale length percentiles
<out>/<name>/teacher_<split>.journal.jsonl  the resumable journal (finished examples in completion order)

`data_dir` and `out_dir` may be local or `gs://...` (etils.epath). An object store has no append or fsync, so
with a gs:// `out_dir` the journal lives in a local folder (`journal_dir`, by default under
`$SBS_CACHE_DIR`/`~/.cache/sbs_jax/teacher/`, keyed by the output path); each final file is one object upload,
which appears whole or not at all.

The final files are written only once every example is journaled, each atomically (temporary file + rename),
and depend only on the journaled records, so a run interrupted and resumed any number of times ends with the
same bytes as an uninterrupted one.
"""
import concurrent.futures as futures
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pathlib
import time

from etils import epath

from sbs_jax import paths
from sbs_jax.data.records import teacher_samples
from sbs_jax.teacher.client import (FatalRequestError, RequestFailed, TeacherClient, TeacherError,
                                    TeacherInputError)
from sbs_jax.teacher.journal import Journal
from sbs_jax.teacher.parsing import agrees, gold_label, select_output
from sbs_jax.teacher.templates import Template

log = logging.getLogger("sbs_jax.teacher")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    data_dir: str
    dataset: str                 # the folder <data_dir>/<dataset> holding <dataset>_<split>.json
    split: str
    out_dir: str
    num_samples: int = 1         # > 1: self-consistency (majority label over samples)
    filter_agree: bool = False   # keep only examples whose teacher label equals the gold label
    concurrency: int = 8         # requests in flight
    chunk_size: int = 1000       # completions per <split>_CoT_<i>.json
    limit: int | None = None     # only the first `limit` examples
    journal_dir: str | None = None   # where the journal lives; default: next to the outputs (local out_dir)

    def __post_init__(self):
        for key in ("num_samples", "concurrency", "chunk_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")


def read_examples(path, limit: int | None = None) -> tuple[list[str], list[dict], list[int]]:
    """The JSON-lines examples file (local or gs://): raw lines (copied verbatim to the output), the parsed
    objects and their line numbers (blank lines are skipped)."""
    path = epath.Path(path)
    if not path.is_file():
        raise TeacherInputError(f"examples file {path} not found (expected <data_dir>/<dataset>/<dataset>_<split>.json)")
    text = paths.read_utf8(path, "examples file")
    lines, examples, linenos = [], [], []
    with io.StringIO(text, newline=None) as f:       # newlines as a text-mode file reads them
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(lines) >= limit:
                break
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise TeacherInputError(f"{path}:{lineno}: invalid JSON ({e.msg}); expected one example object per "
                                   f"line") from None
            if not isinstance(example, dict):
                raise TeacherInputError(f"{path}:{lineno}: expected a JSON object, got {type(example).__name__}")
            lines.append(line.rstrip("\n"))
            examples.append(example)
            linenos.append(lineno)
    return lines, examples, linenos


def _atomic_write(path: epath.Path, text: str):
    if not paths.is_local(path):
        path.write_text(text)           # one object upload: readers see the old object or the whole new one
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _percentiles(values: list[int]) -> dict:
    """Nearest-rank percentiles."""
    if not values:
        return {}
    values = sorted(values)
    out = {f"p{q}": values[max(0, math.ceil(q / 100 * len(values)) - 1)] for q in (5, 25, 50, 75, 95)}
    out.update(min=values[0], max=values[-1], mean=round(sum(values) / len(values), 2))
    return out


def _same_dir(a: epath.Path, b: epath.Path) -> bool:
    if paths.is_local(a) and paths.is_local(b):
        return pathlib.Path(a).resolve() == pathlib.Path(b).resolve()
    return str(a).rstrip("/") == str(b).rstrip("/")


def journal_path(config: GenerateConfig) -> pathlib.Path:
    """The journal must be a local file (appended and fsynced); a gs:// out_dir gets one in a local folder."""
    name = f"teacher_{config.split}.journal.jsonl"
    if config.journal_dir:
        return pathlib.Path(config.journal_dir).expanduser() / config.dataset / name
    if paths.is_local(config.out_dir):
        return pathlib.Path(config.out_dir) / config.dataset / name
    key = hashlib.sha256(str(config.out_dir).rstrip("/").encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("SBS_CACHE_DIR", "~/.cache/sbs_jax")).expanduser()
    return cache / "teacher" / key / config.dataset / name


class _Run:
    def __init__(self, config: GenerateConfig, template: Template, client: TeacherClient):
        self.config, self.template, self.client = config, template, client
        self.examples_path = epath.Path(config.data_dir) / config.dataset / f"{config.dataset}_{config.split}.json"
        self.lines, self.examples, self.linenos = read_examples(self.examples_path, config.limit)
        self.out = paths.absolute(config.out_dir) / config.dataset
        if _same_dir(self.out, self.examples_path.parent):
            raise TeacherInputError(f"--out {config.out_dir} is the input data dir: its examples and teacher files "
                               f"would be overwritten; write to another directory")
        self.chat = client.config.api == "chat"
        if config.filter_agree and template.gold.field is None:
            raise TeacherInputError(f"--filter_agree needs gold labels, but template {template.name!r} names no gold "
                               f"field (set gold.field)")
        self.golds = []                 # checked before any request is made
        for example, lineno in zip(self.examples, self.linenos):
            try:
                self.golds.append(gold_label(example, template.gold))
            except (KeyError, ValueError) as e:
                raise TeacherInputError(f"{self.examples_path}:{lineno}: {e}") from None

    def settings(self) -> dict:
        c = self.client.config
        lines = hashlib.sha256("\n".join(self.lines).encode("utf-8")).hexdigest()[:16]
        # What decides the outputs (not the endpoint URL: replicas of one model may serve the same run).
        return {"dataset": self.config.dataset, "split": self.config.split, "examples": len(self.examples),
                "examples_sha256": lines, "template": self.template.fingerprint(), "model": c.model, "api": c.api,
                "temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens, "stop": list(c.stop),
                "seed": c.seed, "num_samples": self.config.num_samples}

    def prompt(self, index: int):
        where = f"example {index} ({self.examples_path}:{self.linenos[index]})"
        ex = self.examples[index]
        return self.template.messages(ex, where) if self.chat else self.template.prompt(ex, where)

    def record(self, index: int, prompt, texts: list[str]) -> dict:
        t = self.template
        sel = select_output(texts, t.parse, t.gold)
        gold = self.golds[index]
        label = sel.parsed.label if sel.parsed else None
        rec = {"index": index, "status": "ok" if sel.parsed else "parse_error", "prompt": prompt,
               "outputs": texts, "output": texts[sel.index],
               "rationale": sel.parsed.rationale if sel.parsed else None, "label": label, "gold": gold,
               "agrees": None if gold is None or label is None else agrees(label, gold, t.gold)}
        if self.config.num_samples > 1:
            rec["votes"] = sel.votes
        return rec

    def request_all(self, journal: Journal, done: dict[int, dict]) -> list[int]:
        """Requests every example not yet journaled; returns the indices that failed after all retries."""
        todo = iter([i for i in range(len(self.examples)) if i not in done])
        failed, in_flight = [], {}
        start, last_log, n_start = time.monotonic(), time.monotonic(), len(done)
        pool = futures.ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="teacher")
        try:
            while True:
                for index in todo:      # keep a bounded window in flight; prompts are built lazily
                    prompt = self.prompt(index)
                    in_flight[pool.submit(self.client.sample, prompt, self.config.num_samples)] = (index, prompt)
                    if len(in_flight) >= 2 * self.config.concurrency:
                        break
                if not in_flight:
                    break
                finished, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
                batch = []
                for fut in finished:
                    index, prompt = in_flight.pop(fut)
                    try:
                        texts = fut.result()
                    except RequestFailed as e:
                        failed.append(index)
                        log.error("example %d failed: %s", index, self.client.redact(e))
                        continue
                    batch.append(self.record(index, prompt, texts))
                if batch:
                    journal.append(*batch)
                done.update((rec["index"], rec) for rec in batch)
                if time.monotonic() - last_log > 10:
                    last_log = time.monotonic()
                    rate = (len(done) - n_start) / (last_log - start)
                    log.info("%d/%d examples done (%.1f/s, %d retries)", len(done), len(self.examples), rate,
                             self.client.stats["retries"])
        except BaseException:
            # Stop retrying and let the requests in flight end (their results are not journaled), so no
            # thread outlives the run.
            self.client.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return sorted(failed)

    def finalize(self, done: dict[int, dict]) -> dict:
        # Every file below is built from these records and the summary, both through the client's redactor.
        records = [self.client.redact.redact_obj(done[i]) for i in range(len(self.examples))]
        for rec in records:
            rec["kept"] = rec["agrees"] is True if self.config.filter_agree else True
        kept = [r for r in records if r["kept"]]
        llm = self.out / "llm"
        llm.mkdir(parents=True, exist_ok=True)
        chunks = [kept[i:i + self.config.chunk_size] for i in range(0, len(kept), self.config.chunk_size)] or [[]]
        for i, chunk in enumerate(chunks):
            _atomic_write(llm / f"{self.config.split}_CoT_{i}.json", json.dumps([r["output"] for r in chunk]))
        _atomic_write(teacher_samples.samples_path(llm, self.config.split),
                      teacher_samples.samples_text(r["outputs"] for r in kept))
        for stale in llm.glob(f"{self.config.split}_CoT_*.json"):     # left by an earlier run with more chunks
            suffix = stale.stem.rsplit("_", 1)[-1]
            if suffix.isdigit() and int(suffix) >= len(chunks):
                stale.unlink()
        _atomic_write(self.out / f"{self.config.dataset}_{self.config.split}.json",
                      "".join(self.lines[r["index"]] + "\n" for r in kept))
        _atomic_write(self.out / f"teacher_{self.config.split}.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        summary = self.client.redact.redact_obj(self.summary(records))
        _atomic_write(self.out / f"teacher_{self.config.split}_summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def summary(self, records: list[dict]) -> dict:
        parsed = [r for r in records if r["status"] == "ok"]
        with_gold = [r for r in records if r["gold"] is not None]
        correct = sum(r["agrees"] is True for r in records)
        return {
            "dataset": self.config.dataset, "split": self.config.split, "template": self.template.name,
            "model": self.client.config.model, "num_samples": self.config.num_samples,
            "examples": len(records), "parsed": len(parsed), "parse_failures": len(records) - len(parsed),
            "with_gold": len(with_gold), "teacher_correct": correct,
            # percent of the examples with gold; unparsed ones count as wrong (the datasets README's convention)
            "teacher_accuracy": round(100 * correct / len(with_gold), 2) if with_gold else None,
            "filter_agree": self.config.filter_agree, "kept": sum(r["kept"] for r in records),
            "rationale_words": _percentiles([len(r["rationale"].split()) for r in parsed]),
            "rationale_chars": _percentiles([len(r["rationale"]) for r in parsed]),
        }


def generate(config: GenerateConfig, template: Template, client: TeacherClient) -> dict:
    """Runs (or resumes) teacher generation and writes the layout; returns the summary.

    Raises TeacherError when examples are still missing (they failed after every retry): the journal keeps the
    finished ones, and calling again with the same settings requests only the rest."""
    run = _Run(config, template, client)
    run.out.mkdir(parents=True, exist_ok=True)
    path = journal_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not paths.is_local(run.out):
        log.info("journal (local, for resuming): %s", path)
    journal = Journal(path, run.settings(), len(run.examples), redact=client.redact)
    done = journal.open()
    try:
        if done:
            log.info("resuming: %d of %d examples already journaled in %s", len(done), len(run.examples),
                     journal.path)
        try:
            failed = run.request_all(journal, done)
        except FatalRequestError as e:
            raise TeacherError(f"the server rejected a request, stopping ({e}); {len(done)} examples are "
                               f"journaled in {journal.path}") from None
    finally:
        journal.close()
    if failed:
        raise TeacherError(f"{len(failed)} of {len(run.examples)} examples failed after every retry (first: "
                           f"example {failed[0]}); {len(done)} are journaled in {journal.path}; run the same "
                           f"command again to request only the missing ones")
    return run.finalize(done)
