"""`sbs teacher generate` and `sbs teacher prompt` (docs/teacher.md)."""
import argparse
import json
import logging
import os
import sys

from etils import epath

from sbs_jax import errors
from sbs_jax.teacher.client import ClientConfig, TeacherClient, TeacherError, TeacherInputError
from sbs_jax.teacher.generate import GenerateConfig, generate, read_examples
from sbs_jax.teacher.redact import RedactingFilter, Redactor
from sbs_jax.teacher.templates import BUILTIN, TemplateError, load_template

log = logging.getLogger("sbs_jax.teacher")

# Task-name suffixes (docs/ARCHITECTURE.md): every task of dataset D reads the same data dir folder D.
_TASK_SUFFIXES = ("_sbs_llm", "_sbs", "_distill", "_ft")


def dataset_of_task(task: str) -> str:
    for suffix in _TASK_SUFFIXES:
        if task.endswith(suffix):
            return task[: -len(suffix)]
    return task


def _add_source_args(p: argparse.ArgumentParser):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a task name (cqa_sbs, svamp_ft, ...) or paper dataset name; picks the dataset "
                                    "folder and its built-in template")
    src.add_argument("--dataset", help="the dataset folder name under --data_dir (user tasks: with --template)")
    p.add_argument("--data_dir", required=True, help="data dir in the official layout: <name>/<name>_<split>.json "
                                                     "(local or gs://)")
    p.add_argument("--split", default="train")
    p.add_argument("--template", help=f"built-in ({', '.join(BUILTIN)}) or a template JSON file; "
                                      "default: the built-in of the dataset")
    p.add_argument("--api", choices=("completions", "chat"), default="completions")
    p.add_argument("--limit", type=int, help="only the first N examples")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sbs teacher", description="Teacher rationales from an "
                                     "OpenAI-compatible endpoint, written in the official data layout.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="prompt the teacher for every example of a split and write the layout")
    _add_source_args(g)
    g.add_argument("--endpoint", required=True, help="server base URL, e.g. http://localhost:8000/v1")
    g.add_argument("--model", required=True, help="model name the server serves")
    g.add_argument("--out", required=True, help="output data dir (<out>/<name>/...), local or gs://")
    g.add_argument("--journal_dir", help="local folder for the resumable journal (default: next to the "
                                         "outputs; for a gs:// --out, under $SBS_CACHE_DIR or ~/.cache/sbs_jax)")
    g.add_argument("--api_key_env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (sent as a Bearer token; never logged)")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per socket operation before a retry")
    g.add_argument("--max_retries", type=int, default=6)
    g.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each retry)")
    g.add_argument("--max_backoff", type=float, default=60.0, help="cap on one delay, Retry-After included")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top_p", type=float)
    g.add_argument("--max_tokens", type=int, default=256)
    g.add_argument("--seed", type=int, help="sampling seed sent to the server (where supported)")
    g.add_argument("--num_samples", type=int, default=1,
                   help="self-consistency: samples per example (needs --temperature > 0); majority label wins")
    g.add_argument("--filter_agree", action="store_true",
                   help="keep only examples whose teacher label agrees with the gold label")
    g.add_argument("--chunk_size", type=int, default=1000, help="completions per <split>_CoT_<i>.json")
    g.add_argument("--log_level", default="INFO")
    p = sub.add_parser("prompt", help="print the prompt of one example (no request is made)")
    _add_source_args(p)
    p.add_argument("--index", type=int, default=0)
    return parser


def _resolve(args) -> tuple[str, object]:
    dataset = dataset_of_task(args.task) if args.task else args.dataset
    name = args.template or dataset
    if args.template is None and name not in BUILTIN:
        raise TemplateError(f"no built-in template for dataset {dataset!r} (built-ins: {', '.join(BUILTIN)}); "
                            f"pass --template FILE (format in docs/teacher.md)")
    return dataset, load_template(name)


def _generate(args, api_key: str | None) -> int:
    if args.num_samples > 1 and args.temperature <= 0:
        raise ValueError("--num_samples > 1 needs --temperature > 0: greedy samples are all the same")
    dataset, template = _resolve(args)
    if api_key is None:
        log.info("$%s is not set: requests carry no Authorization header", args.api_key_env)
    client = TeacherClient(ClientConfig(
        endpoint=args.endpoint, model=args.model, api=args.api, api_key=api_key, timeout_s=args.timeout,
        max_retries=args.max_retries, backoff_s=args.backoff, max_backoff_s=args.max_backoff,
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, stop=template.stop,
        seed=args.seed))
    config = GenerateConfig(data_dir=args.data_dir, dataset=dataset, split=args.split, out_dir=args.out,
                            num_samples=args.num_samples, filter_agree=args.filter_agree,
                            concurrency=args.concurrency, chunk_size=args.chunk_size, limit=args.limit,
                            journal_dir=args.journal_dir)
    summary = generate(config, template, client)
    log.info("%d requests, %d retries", client.stats["requests"], client.stats["retries"])
    print(json.dumps(summary, indent=2))
    return 0


def _prompt(args) -> int:
    dataset, template = _resolve(args)
    path = epath.Path(args.data_dir) / dataset / f"{dataset}_{args.split}.json"
    _, examples, linenos = read_examples(path, args.index + 1)
    if args.index >= len(examples):
        raise TeacherInputError(f"{path} has {len(examples)} examples; --index {args.index} is out of range")
    where = f"example {args.index} ({path}:{linenos[args.index]})"
    if args.api == "chat":
        print(json.dumps(template.messages(examples[args.index], where), indent=2, ensure_ascii=False))
    else:
        print(template.prompt(examples[args.index], where))
    return 0


@errors.command("sbs teacher")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = (os.environ.get(args.api_key_env) or None) if args.command == "generate" else None
    # The client redacts what it hands out; this catches every log line of the teacher logger and the final
    # error line as well (same `Redactor`, same key).
    redact = Redactor([api_key])
    redacting = RedactingFilter(redact)
    log.addFilter(redacting)
    try:
        return _generate(args, api_key) if args.command == "generate" else _prompt(args)
    except TeacherError as e:
        if isinstance(e, errors.InputError):
            raise  # the boundary reports the user's mistake (exit 2)
        print(redact(f"sbs teacher: error: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sbs teacher: interrupted; finished examples are journaled, run the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        log.removeFilter(redacting)
