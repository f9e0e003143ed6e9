"""Few-shot chain-of-thought prompt templates: built-ins for the paper datasets and user JSON files.

A template file is one JSON object (docs/teacher.md has the full description):
  query       str.format pattern over an example's fields, e.g. "Q: {question}\nA:" ({choices[0]} indexes)
  completion  pattern over {rationale} and {label}: how an exemplar's answer follows its query
  exemplars   [{<the fields query uses>, "rationale": ..., "label": <the answer as the teacher writes it>}]
  parse       ParseSpec fields (marker, cut_at, ...): must recover (rationale, label) from `completion`
  gold        GoldSpec fields (field, names, compare), optional
  instruction, separator ("\n\n"), stop (at most 4 strings), name, description: optional
"""
import dataclasses
import hashlib
import importlib.resources
import json
import pathlib

from sbs_jax.teacher.parsing import GoldSpec, ParseSpec, parse_output

BUILTIN = ("cqa", "svamp", "esnli", "anli1")
_KEYS = {"name", "description", "instruction", "query", "completion", "separator", "stop", "exemplars", "parse",
         "gold"}


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    query: str
    completion: str
    exemplars: tuple[dict, ...]
    parse: ParseSpec
    gold: GoldSpec = GoldSpec()
    instruction: str = ""
    separator: str = "\n\n"
    stop: tuple[str, ...] = ()
    description: str = ""
    source: str = ""            # the file it came from, for error messages

    def render_query(self, example: dict, where: str = "example") -> str:
        try:
            return self.query.format(**example)
        except (KeyError, IndexError, AttributeError, ValueError) as e:
            raise TemplateError(f"{self.source}: query pattern {self.query!r} cannot format {where} "
                                f"(fields {sorted(example)}): {type(e).__name__}: {e}") from None

    def render_completion(self, rationale: str, label: str) -> str:
        return self.completion.format(rationale=rationale, label=label)

    def prompt(self, example: dict, where: str = "example") -> str:
        """Completions prompt: instruction, the exemplars with their answers, then the example's query."""
        blocks = [self.instruction.strip()] if self.instruction.strip() else []
        blocks += [self.render_query(ex, f"exemplar {i}") + self.render_completion(ex["rationale"], ex["label"])
                   for i, ex in enumerate(self.exemplars)]
        blocks.append(self.render_query(example, where))
        return self.separator.join(blocks)

    def messages(self, example: dict, where: str = "example") -> list[dict]:
        """Chat prompt: the exemplars as alternating user/assistant turns, then the example's query."""
        msgs = [{"role": "system", "content": self.instruction.strip()}] if self.instruction.strip() else []
        for i, ex in enumerate(self.exemplars):
            msgs.append({"role": "user", "content": self.render_query(ex, f"exemplar {i}")})
            msgs.append({"role": "assistant", "content": self.render_completion(ex["rationale"], ex["label"]).strip()})
        msgs.append({"role": "user", "content": self.render_query(example, where)})
        return msgs

    def fingerprint(self) -> str:
        """Hash of everything that changes prompts or parsing (a journal written under another is refused)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        data.pop("description")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _strings(value, where: str) -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TemplateError(f"{where}: expected a non-empty string or a list of them, got {value!r}")
    return tuple(value)


def _spec(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise TemplateError(f"{where}: expected an object, got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise TemplateError(f"{where}: unknown keys {unknown}; expected some of {sorted(fields)}")
    raw = dict(raw)
    for key in ("cut_at", "label_stop", "names"):
        if key in raw:
            raw[key] = _strings(raw[key], f"{where}.{key}")
    try:
        return cls(**raw)
    except TypeError as e:
        raise TemplateError(f"{where}: {e}") from None


def from_dict(raw: dict, source: str = "<dict>") -> Template:
    """Validates a template object; every exemplar must render and parse back to its own label."""
    if not isinstance(raw, dict):
        raise TemplateError(f"{source}: a template is a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KEYS)
    missing = sorted({"query", "completion", "exemplars", "parse"} - set(raw))
    if unknown or missing:
        raise TemplateError(f"{source}: unknown keys {unknown}, missing keys {missing}; keys are {sorted(_KEYS)}")
    for key in ("query", "completion", "instruction", "separator", "name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise TemplateError(f"{source}: {key} must be a string, got {raw[key]!r}")
    exemplars = raw["exemplars"]
    if not isinstance(exemplars, list) or not exemplars:
        raise TemplateError(f"{source}: exemplars must be a non-empty list")
    gold = _spec(GoldSpec, raw.get("gold", {}), f"{source}: gold")
    if gold.compare not in ("exact", "numeric"):
        raise TemplateError(f"{source}: gold.compare must be 'exact' or 'numeric', got {gold.compare!r}")
    stop = _strings(raw.get("stop"), f"{source}: stop")
    if len(stop) > 4:
        raise TemplateError(f"{source}: stop has {len(stop)} strings; OpenAI-compatible servers accept at most 4")
    template = Template(
        name=raw.get("name", pathlib.Path(source).stem), query=raw["query"], completion=raw["completion"],
        exemplars=tuple(exemplars), parse=_spec(ParseSpec, raw["parse"], f"{source}: parse"), gold=gold,
        instruction=raw.get("instruction", ""), separator=raw.get("separator", "\n\n"), stop=stop,
        description=raw.get("description", ""), source=source)
    for i, ex in enumerate(exemplars):
        where = f"{source}: exemplars[{i}]"
        if not isinstance(ex, dict) or not isinstance(ex.get("rationale"), str) or not isinstance(ex.get("label"), str):
            raise TemplateError(f"{where}: expected an object with string 'rationale' and 'label'")
        template.render_query(ex, f"exemplars[{i}]")
        parsed = parse_output(template.render_completion(ex["rationale"], ex["label"]).strip(), template.parse)
        if parsed is None or parsed.rationale != ex["rationale"].strip():
            raise TemplateError(f"{where}: its completion does not parse back with the parse spec "
                                f"(got {parsed}); the teacher would copy an answer format the parser rejects")
    return template


def load_template(name_or_path: str) -> Template:
    """A built-in template by dataset name (cqa, svamp, esnli, anli1) or a user template JSON file."""
    if name_or_path in BUILTIN:
        resource = importlib.resources.files("sbs_jax.teacher").joinpath(f"templates/{name_or_path}.json")
        return from_dict(json.loads(resource.read_text(encoding="utf-8")), f"built-in template {name_or_path}")
    path = pathlib.Path(name_or_path)
    if not path.is_file():
        raise TemplateError(f"template {name_or_path!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TemplateError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None
    return from_dict(raw, str(path))
