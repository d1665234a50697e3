"""Reading spec files safely and turning validation errors into messages that name the YAML path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

MAX_SPEC_BYTES = 1_000_000
MAX_NESTING = 64

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """A spec that cannot be used; ``errors`` lists (path, value, message) for every problem."""

    def __init__(self, source: str, errors: list[dict[str, Any]]) -> None:
        self.source = source
        self.errors = errors
        lines = [f"{e['path'] or '<root>'}: {e['message']} (got {e['value']!r})" for e in errors]
        super().__init__(f"{source}: invalid spec\n  " + "\n  ".join(lines))


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
        value = e.get("input")
        if isinstance(value, (dict, list)) and len(repr(value)) > 200:
            value = f"<{type(value).__name__} of {len(value)}>"
        elif isinstance(value, str) and len(value) > 200:
            value = f"{value[:200]}... ({len(value)} characters)"
        out.append({"path": _path(loc), "value": value, "message": e["msg"], "type": e["type"]})
    return out


def parse_yaml(text: bytes | str, source: str = "<spec>") -> Any:
    """Parse YAML with the safe loader; bad encoding, syntax or aliases become a SpecError."""
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError(source, [{"path": "", "value": f"{len(text)} bytes", "message": f"spec larger than {MAX_SPEC_BYTES} bytes"}])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(source, [{"path": "", "value": f"byte {exc.start}", "message": "spec is not valid UTF-8"}]) from None
    if "&" in text and "*" in text and _has_aliases(text):
        raise SpecError(source, [{"path": "", "value": "YAML alias", "message": "YAML anchors/aliases are not allowed in specs"}])
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise SpecError(source, [{"path": "", "value": None, "message": f"spec nested deeper than {MAX_NESTING} levels"}]) from None
    except ValueError as exc:  # a scalar Python refuses to convert, e.g. an integer of more than 4300 digits
        raise SpecError(source, [{"path": "", "value": None, "message": f"YAML value not allowed: {str(exc)[:200]}"}]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        prefix = "" if isinstance(exc, _Refused) else "YAML syntax error: "
        raise SpecError(source, [{"path": "", "value": where, "message": f"{prefix}{getattr(exc, 'problem', exc)}"}]) from None


# YAML 1.2 floats without a dot (``1e-5``), which PyYAML's YAML 1.1 rules read as strings: the
# spec models are strict, so a string would be refused where a number is meant.
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class _Refused(yaml.MarkedYAMLError):
    """Well-formed YAML that specs do not accept (too deep, duplicate keys)."""


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also refuses nesting deeper than ``MAX_NESTING`` (its composer
    recurses per level, so deep input would otherwise end in a RecursionError) and duplicate keys
    in a mapping (which the safe loader silently resolves to the last value)."""

    _depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _Refused(None, None, f"spec nested deeper than {MAX_NESTING} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused("while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _has_aliases(text: str) -> bool:
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            return True
    return False


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
        raise SpecError(str(path), [{"path": "", "value": str(path), "message": f"cannot read file: {exc.strerror}"}]) from None
    return validate(model, parse_yaml(raw, str(path)), str(path))


_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))
