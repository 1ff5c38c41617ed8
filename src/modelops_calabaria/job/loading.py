"""Reading a job: YAML or JSON text into a validated :class:`CalibrationJob`.

A key given twice in one mapping, a file larger than MAX_JOB_FILE_BYTES and a job that
expands (YAML aliases) past MAX_JOB_VALUES values are refused with the line or the limit.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job.calibration import CalibrationJob
from modelops_calabaria.job.limits import MAX_JOB_FILE_BYTES, MAX_JOB_VALUES, MAX_NESTING, count_values
from modelops_calabaria.job.problems import validation_problems

def job_from_dict(data: Any, *, source: str = "job", base_dir: Path | None = None) -> CalibrationJob:
    """Validate a mapping into a CalibrationJob or raise JobSpecError naming each bad field."""
    if data is None:
        raise JobSpecError(f"{source} is empty", hint="a job needs at least study, model, parameters and targets")
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: expected a mapping of job fields at the top level, got {type(data).__name__}")
    if count_values(data, MAX_JOB_VALUES) > MAX_JOB_VALUES:
        raise JobSpecError(
            f"{source}: the job holds more than {MAX_JOB_VALUES:,} values once YAML aliases are expanded, "
            f"or is nested more than {MAX_NESTING} levels deep",
            hint="remove nested anchors/aliases; put large observed data in a CSV file",
        )
    try:
        job = CalibrationJob.model_validate(data)
    except ValidationError as e:
        raise JobSpecError(f"{source} is not a valid calibration job:", problems=validation_problems(e)) from e
    return job.with_base_dir(base_dir or Path.cwd())


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


class _JobYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader with YAML 1.2 core-schema scalars, refusing a key given twice in
    one mapping and the YAML 1.1 forms whose meaning differs between the two versions.

    Plain scalars resolve as YAML 1.2's core schema (and JSON) read them: ``true``/``false``
    are booleans, ``null``/``~``/empty are null, ``[-+]?[0-9]+``, ``0o17`` and ``0x10`` are
    integers, decimal and exponent forms (``1e-3``, ``.inf``, ``.nan``) are floats;
    everything else is a string, so ``on``, ``off``, ``yes`` and ``no`` are text.
    Refused with their line, because YAML 1.1 (PyYAML's default, and other tools reading
    the same file) gives them another meaning: a whole number with a leading zero (``017``:
    octal 15 in YAML 1.1), a base-60 number (``1:30``: 90 in YAML 1.1), digits grouped
    with ``_`` (``1_000``), a binary ``0b101``. An integer of more than MAX_INT_DIGITS
    digits is refused too (Python's int parser raises on a few thousand).

    (Aliases are not expanded here: the constructor shares one object per anchor,
    and :func:`count_values` bounds the expanded size before anything walks it.)
    """

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' overrides on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key] + 1)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
        return super().construct_mapping(node, deep=deep)

    def construct_core_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        if len(digits) > MAX_INT_DIGITS:
            raise _Ambiguous(node, f"a whole number of {len(digits):,} digits (at most {MAX_INT_DIGITS} are accepted)",
                             "every number the job takes is far smaller: see 'Limits' in docs/reliability.md")
        if digits[:2] in ("0x", "0X"):
            return sign * int(digits[2:], 16)
        if digits[:2] in ("0o", "0O"):
            return sign * int(digits[2:], 8)
        return sign * int(digits)

    def construct_ambiguous(self, node: yaml.ScalarNode) -> Any:
        text = str(self.construct_scalar(node))
        plain = text.replace("_", "")
        if ":" in text:
            raise _Ambiguous(node, f"{text!r} is a base-60 number in YAML 1.1 and text in YAML 1.2",
                             "write the number in plain digits (e.g. seconds: 90), or quote it if you mean text")
        if "_" in text:
            raise _Ambiguous(node, f"{text!r} groups digits with '_': {plain} in YAML 1.1, text in YAML 1.2",
                             f"write {plain}, or quote it if you mean text")
        if text.lstrip("+-")[:2] in ("0b", "0B"):
            raise _Ambiguous(node, f"{text!r} is a binary number in YAML 1.1 and text in YAML 1.2",
                             "write the number in decimal, or quote it if you mean text")
        digits = text.lstrip("+-")
        octal = f"octal {int(digits, 8)}" if set(digits) <= set("01234567") and len(digits) <= MAX_INT_DIGITS else "text"
        raise _Ambiguous(node, f"{text!r} has a leading zero: {octal} in YAML 1.1, decimal {digits.lstrip('0') or '0'} in YAML 1.2",
                         f"write {digits.lstrip('0') or '0'} (or 0o{digits.lstrip('0') or '0'} for octal), or quote it if you mean text")


MAX_INT_DIGITS = 30  # digits of an integer in a job file (larger ones are refused with their line)
_AMBIGUOUS_TAG = "tag:calabaria:yaml-1.1-ambiguous"


class _BigNumber(Exception):
    pass


class _Ambiguous(Exception):
    def __init__(self, node: yaml.Node, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.line, self.problem, self.hint = node.start_mark.line + 1, problem, hint


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1033-core-schema), plus the YAML 1.1
# forms refused above. Within one first character the first matching pattern wins.
_CORE = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_AMBIGUOUS_TAG, r"^[-+]?(?:0[0-9_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|[0-9][0-9_]*_[0-9_]*(?:\.[0-9_]*)?|0[bB][01_]+)$",
     list("-+0123456789")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     list("-+.0123456789")),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", ["<"]),
]
for _tag, _pattern, _first in _CORE:
    _JobYamlLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
_JobYamlLoader.add_constructor("tag:yaml.org,2002:int", _JobYamlLoader.construct_core_int)
_JobYamlLoader.add_constructor(_AMBIGUOUS_TAG, _JobYamlLoader.construct_ambiguous)


def _key_lines(text: str, start: int) -> list[tuple[str, int]]:
    """Keys of the JSON object whose members start at ``start``, with their lines."""
    keys: list[tuple[str, int]] = []
    depth, i = 0, start
    while i < len(text) and depth >= 0:
        c = text[i]
        if c == '"':
            value, end = json.decoder.scanstring(text, i + 1)
            after = end
            while after < len(text) and text[after] in " \t\r\n":
                after += 1
            if depth == 0 and text[after: after + 1] == ":":
                keys.append((value, text.count("\n", 0, i) + 1))
            i = end
            continue
        depth += 1 if c in "{[" else -1 if c in "}]" else 0
        i += 1
    return keys


def _json_load(text: str) -> Any:
    """``json.loads`` refusing a key given twice in one object."""
    decoder = json.JSONDecoder()

    def parse_object(s_and_end: tuple[str, int], strict: bool, scan_once: Any, _hook: Any, _pairs_hook: Any,
                     memo: Any = None) -> tuple[Any, int]:
        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
        seen: dict[str, int] = {}
        lines = None
        for i, (key, _) in enumerate(pairs):
            if key in seen:
                lines = lines or _key_lines(s_and_end[0], s_and_end[1])
                raise _DuplicateKey(key, lines[i][1], lines[seen[key]][1])
            seen[key] = i
        return dict(pairs), end

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_INT_DIGITS:
            raise _BigNumber(f"{digits[:20]}... has {len(digits.lstrip('-')):,} digits")
        return int(digits)

    decoder.parse_object = parse_object  # type: ignore[assignment]
    decoder.parse_int = parse_int  # type: ignore[assignment]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text)


def load_job(path: str | Path) -> CalibrationJob:
    """Read a YAML or JSON job file.

    A key given twice in one mapping, a file larger than MAX_JOB_FILE_BYTES, and a
    job that expands (YAML aliases) past MAX_JOB_VALUES values are refused.

    Raises:
        JobSpecError: the file is missing, too large, unparsable, ambiguous, or any field is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise JobSpecError(f"job file not found: {path}", hint="pass the path of a YAML or JSON job file")
    try:
        size = path.stat().st_size
        if size > MAX_JOB_FILE_BYTES:
            raise JobSpecError(f"job file {path} is {size:,} bytes, more than the limit of {MAX_JOB_FILE_BYTES:,}",
                               hint="put large observed data in a CSV file and reference it from 'data'")
        with path.open("rb") as fh:
            raw = fh.read(MAX_JOB_FILE_BYTES + 1)  # the file may grow after stat
        if len(raw) > MAX_JOB_FILE_BYTES:
            raise JobSpecError(f"job file {path} is more than {MAX_JOB_FILE_BYTES:,} bytes")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobSpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", hint="save the job file as UTF-8 YAML or JSON") from e
    except OSError as e:
        raise JobSpecError(f"job file {path} cannot be read: {e.strerror or e}") from e
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        data = _json_load(text) if kind == "JSON" else yaml.load(text, Loader=_JobYamlLoader)  # noqa: S506 - a safe loader
    except _DuplicateKey as e:
        raise JobSpecError(f"{path}, line {e.line}: key {e.key!r} is given twice in one mapping (first at line {e.first_line})",
                           hint="keep one of them: the job would otherwise silently take the last") from None
    except _Ambiguous as e:
        raise JobSpecError(f"{path}, line {e.line}: {e.problem}", hint=e.hint) from None
    except _BigNumber as e:
        raise JobSpecError(f"{path}: a number of more than {MAX_INT_DIGITS} digits ({e})",
                           hint="every number the job takes is far smaller: see 'Limits' in docs/reliability.md") from None
    except RecursionError:
        raise JobSpecError(f"{path}: nested more than {MAX_NESTING} levels deep",
                           hint="a job is a few levels of mappings and lists") from None
    except json.JSONDecodeError as e:
        before = e.doc[: e.pos].rstrip()
        hint = "remove the trailing comma before it" if before.endswith(",") and e.doc[e.pos: e.pos + 1] in ("}", "]") else ""
        raise JobSpecError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}", hint=hint) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        opened = f" ({context} that starts at line {start.line + 1}, column {start.column + 1})" if context and start else ""
        raise JobSpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}{opened}") from e
    return job_from_dict(data, source=str(path), base_dir=path.resolve().parent)
