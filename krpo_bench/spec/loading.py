"""Reading spec files safely and turning validation errors into messages that name the YAML path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

MAX_SPEC_BYTES = 1_000_000
MAX_NESTING = 64
MAX_NODES = 50_000  # a spec of 1,000 variants needs ~10,000
MAX_VALUE_CHARS = 200  # a value echoed in an error
MAX_PATH_CHARS = 400  # an error's spec path
MAX_MESSAGE_CHARS = 1000  # an error's message (which may quote values)
MAX_ERRORS = 100  # errors one SpecError reports (the rest are counted)

M = TypeVar("M", bound=BaseModel)


def clip(value: Any, limit: int = MAX_VALUE_CHARS) -> Any:
    """``value`` as an error may echo it: text longer than ``limit`` characters cut to its first
    ``limit`` and its length, a list or mapping whose repr is longer named by type and size."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value)} characters)"
    if isinstance(value, (dict, list, tuple)) and len(repr(value)) > limit:
        return f"<{type(value).__name__} of {len(value)}>"
    return value


class SpecError(ValueError):
    """A spec that cannot be used; ``errors`` lists (path, value, message) for every problem, each
    cut by :func:`clip` (values to 200 characters, paths to 400, messages to 1,000); past
    ``MAX_ERRORS`` problems, one last entry counts the rest."""

    def __init__(self, source: str, errors: list[dict[str, Any]]) -> None:
        self.source = clip(source, MAX_PATH_CHARS)
        self.errors = [
            {
                **e,
                "path": clip(e["path"], MAX_PATH_CHARS),
                "value": clip(e.get("value")),
                "message": clip(e["message"], MAX_MESSAGE_CHARS),
            }
            for e in errors[:MAX_ERRORS]
        ]
        if len(errors) > MAX_ERRORS:
            self.errors.append(
                {
                    "path": "",
                    "value": len(errors) - MAX_ERRORS,
                    "message": f"and {len(errors) - MAX_ERRORS} more problems",
                    "type": "too_many_errors",
                }
            )
        lines = [f"{e['path'] or '<root>'}: {e['message']} (got {e['value']!r})" for e in self.errors]
        super().__init__(f"{self.source}: invalid spec\n  " + "\n  ".join(lines))


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_errors(error: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as ``{"path", "value", "message", "type"}``; union tags are dropped from paths."""
    out = []
    for e in error.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        out.append({"path": _path(loc), "value": clip(e.get("input")), "message": e["msg"], "type": e["type"]})
    return out


def parse_yaml(text: bytes | str, source: str = "<spec>") -> Any:
    """Parse YAML with libyaml's safe loader (PyYAML's pure-Python one without libyaml); bad
    encoding, syntax, anchors/aliases, nesting deeper than ``MAX_NESTING`` or more than
    ``MAX_NODES`` nodes become a SpecError. The bounds are checked on the parser's events before
    anything is built, so the cost is linear in the text and stops at the first refusal."""
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError(
                source,
                [{"path": "", "value": f"{len(text)} bytes", "message": f"spec larger than {MAX_SPEC_BYTES} bytes"}],
            )
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(
                source, [{"path": "", "value": f"byte {exc.start}", "message": "spec is not valid UTF-8"}]
            ) from None
    try:
        _check_events(text)
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a safe loader subclass
    except RecursionError:
        raise SpecError(
            source, [{"path": "", "value": None, "message": f"spec nested deeper than {MAX_NESTING} levels"}]
        ) from None
    except ValueError as exc:  # a scalar Python refuses to convert, e.g. an integer of more than 4300 digits
        raise SpecError(source, [{"path": "", "value": None, "message": f"YAML value not allowed: {exc}"}]) from None
    except yaml.YAMLError as exc:
        mark, offset = getattr(exc, "problem_mark", None), getattr(exc, "position", None)
        where = (
            f"line {mark.line + 1}, column {mark.column + 1}"
            if mark
            else f"character {offset}"
            if offset is not None
            else "unknown position"
        )
        prefix = "" if isinstance(exc, _Refused) else "YAML syntax error: "
        raise SpecError(
            source, [{"path": "", "value": where, "message": f"{prefix}{getattr(exc, 'problem', exc)}"}]
        ) from None


_COLLECTION_START = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_COLLECTION_END = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_events(text: str) -> None:
    """Raise ``_Refused`` at the first anchor or alias, at nesting deeper than ``MAX_NESTING``, or
    past ``MAX_NODES`` nodes (one pass over the parser's events; syntax errors raise as they come)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_SpecLoader):
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
                raise _Refused(None, None, "YAML anchors/aliases are not allowed in specs", event.start_mark)
            if nodes > MAX_NODES:
                raise _Refused(None, None, f"spec holds more than {MAX_NODES:,} YAML nodes", event.start_mark)
        if isinstance(event, _COLLECTION_START):
            depth += 1
            if depth > MAX_NESTING:
                raise _Refused(None, None, f"spec nested deeper than {MAX_NESTING} levels", event.start_mark)
        elif isinstance(event, _COLLECTION_END):
            depth -= 1


# YAML 1.2 floats without a dot (``1e-5``), which PyYAML's YAML 1.1 rules read as strings: the
# spec models are strict, so a string would be refused where a number is meant.
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class _Refused(yaml.MarkedYAMLError):
    """Well-formed YAML that specs do not accept (aliases, too deep, too many nodes, duplicate keys)."""


class _SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's parser when installed) that also refuses duplicate keys in a
    mapping (which the safe loader silently resolves to the last value). Depth, node count and
    aliases are refused before it runs (:func:`_check_events`)."""

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(
                        "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def validate(model: type[M], data: Any, source: str = "<spec>") -> M:
    """``model.model_validate(data)`` with errors re-raised as a SpecError."""
    if not isinstance(data, dict):
        raise SpecError(source, [{"path": "", "value": type(data).__name__, "message": "spec must be a mapping"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, validation_errors(exc)) from None


def load_spec(model: type[M], path: str | Path) -> M:
    """Read, parse and validate a spec file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            str(path), [{"path": "", "value": str(path), "message": f"cannot read file: {exc.strerror}"}]
        ) from None
    return validate(model, parse_yaml(raw, str(path)), str(path))


_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))
