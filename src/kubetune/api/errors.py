"""Spec errors that name the field path and say what is allowed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class FieldIssue:
    """One problem at a path relative to the model that found it ("" = the model itself)."""

    path: str
    message: str


class SemanticErrors(ValueError):
    """Raised by model validators; carries several issues with their relative paths.

    pydantic keeps the exception in the error's ctx, so `issues_from_validation_error` can
    prefix each relative path with the location of the model that raised it.
    """

    def __init__(self, issues: Iterable[FieldIssue]):
        self.issues = list(issues)
        super().__init__("; ".join(f"{i.path}: {i.message}" if i.path else i.message for i in self.issues))


class SpecError(Exception):
    """A document that is not a valid TuneExperiment; `issues` have absolute paths."""

    def __init__(self, issues: list[FieldIssue], source: str | None = None):
        self.issues = issues
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        lines = [f"{head}{len(self.issues)} error(s) in the TuneExperiment:"]
        lines += [f"  {i.path or '(document)'}: {i.message}" for i in self.issues]
        return "\n".join(lines)


_PATTERN_HELP = {
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
}


def _join(*parts: Any) -> str:
    out = ""
    for p in parts:
        if p == "" or p is None:
            continue
        p = str(p)
        if p.startswith("["):
            out += p
        else:
            out = f"{out}.{p}" if out else p
    return out


def _model_at(annotation: Any, parts: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that `parts` (aliases, dict keys, list indexes) lead to from `annotation`."""
    from typing import Annotated, Union, get_args, get_origin

    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _model_at(args[0], parts)
    if origin is Union or type(annotation).__name__ == "UnionType":
        for arg in args:
            found = _model_at(arg, parts) if arg is not type(None) else None
            if found is not None:
                return found
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not parts:
            return annotation
        by_alias = {(f.alias or n): f for n, f in annotation.model_fields.items()}
        field = by_alias.get(parts[0])
        return _model_at(field.annotation, parts[1:]) if field is not None else None
    if not parts:
        return None
    if origin in (list, tuple):
        return _model_at(args[0], parts[1:]) if args else None
    if origin is dict:
        return _model_at(args[1], parts[1:]) if len(args) > 1 else None
    return None


def _allowed_fields(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """The field names of the model that rejected the unknown field at `loc`."""
    found = _model_at(model, loc[:-1]) if model is not None else None
    if found is None:
        return None
    return [f.alias or n for n, f in found.model_fields.items()]


def _snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# Names other tools use for what kubetune calls otherwise (Ray Tune, Katib, the PyTorch tutorials).
SYNONYMS = {
    "gaussian": "randn", "normal": "randn", "qnormal": "qrandn", "pow2": "powersOfTwo", "categorical": "choice",
    "int": "randint", "integer": "randint", "gridSearch": "grid", "tpe": "hyperopt", "bayesian": "bayesopt",
    "median": "medianStopping", "medianstopping": "medianStopping", "cpus": "cpu", "gpus": "gpu",
    "maximize": "max", "minimize": "min",
}


def suggest(name: str, allowed: list[str] | tuple[str, ...]) -> str:
    """"did you mean `x`? allowed: a, b, c" with the closest names first (difflib)."""
    import difflib

    allowed = [str(a) for a in allowed]
    score = {a: difflib.SequenceMatcher(None, name.lower(), a.lower()).ratio() for a in allowed}
    ranked = sorted(allowed, key=lambda a: -score[a])  # stable: ties keep the documented order
    camel = _snake_to_camel(name)
    if "_" in name and camel in allowed:
        return f"did you mean `{camel}`? (names are camelCase, as in the CRD); allowed: {', '.join(ranked)}"
    close = [a for a in ranked if score[a] >= 0.6][:1]
    if SYNONYMS.get(name) in allowed or SYNONYMS.get(camel) in allowed:
        close = [SYNONYMS.get(name) or SYNONYMS[camel]]
        ranked = close + [a for a in ranked if a != close[0]]
    hint = f"did you mean `{close[0]}`? " if close else ""
    return f"{hint}allowed: {', '.join(ranked)}"


def _drop_losing_union_members(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of a value that matches no member of a union (a distribution or a list), keep the member whose
    errors go deepest: "unknown field gaussian" says more than "Input should be a valid list"."""
    def split(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any] | None:
        for i, part in enumerate(loc):
            if _is_tag(part):
                return loc[:i], part
        return None

    depth: dict[tuple[Any, ...], tuple[int, Any]] = {}
    for err in errors:
        found = split(tuple(err["loc"]))
        if found:
            prefix, tag = found
            if len(err["loc"]) > depth.get(prefix, (-1, None))[0]:
                depth[prefix] = (len(err["loc"]), tag)
    kept = []
    for err in errors:
        found = split(tuple(err["loc"]))
        if found and depth[found[0]][1] != found[1]:
            continue
        kept.append(err)
    return kept


def _is_tag(part: Any) -> bool:
    """pydantic's union-member tags in a location, such as 'Parameter' or 'list[any]'."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part)


def issues_from_validation_error(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[FieldIssue]:
    """Turn pydantic's errors into FieldIssues with dotted camelCase paths and plain messages."""
    issues: list[FieldIssue] = []
    for err in _drop_losing_union_members(exc.errors()):
        loc = tuple(p for p in err["loc"] if not _is_tag(p))
        path = _join(prefix, *[f"[{p}]" if isinstance(p, int) else p for p in loc])
        ctx = err.get("ctx") or {}
        error = ctx.get("error")
        if isinstance(error, SemanticErrors):
            issues += [FieldIssue(_join(path, i.path), i.message) for i in error.issues]
            continue
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            msg = "unknown field" + (f"; {suggest(str(loc[-1]), allowed)}" if allowed else "")
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "string_pattern_mismatch":
            msg = _PATTERN_HELP.get(ctx.get("pattern", ""), err["msg"])
        elif kind == "literal_error":
            expected = re.findall(r"'([^']*)'", ctx.get("expected", ""))
            msg = f"got {err['input']!r}; " + suggest(str(err["input"]), expected) if expected else err["msg"]
        elif kind == "too_short" and ctx.get("min_length") == 1:
            msg = "must list at least one value"
        elif kind == "too_long":
            msg = f"must have at most {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
        elif kind == "value_error":
            msg = str(error) if error is not None else err["msg"]
        else:
            msg = err["msg"]
            if kind.endswith("_type") or kind.endswith("_parsing"):
                msg += f", got {err['input']!r}"
        issues.append(FieldIssue(path, msg))
    # pydantic reports every member of a failed union; keep one line per path and message.
    unique: list[FieldIssue] = []
    for issue in issues:
        if issue not in unique:
            unique.append(issue)
    return unique
