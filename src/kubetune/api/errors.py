"""Spec errors that name the field path and say what is allowed."""

from __future__ import annotations

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
    r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$": 'must be "package.module:function", e.g. kubetune_trials.mnist:train',
}


def describe_pattern(pattern: str, help: str) -> str:
    """Register the words shown instead of a regex when a value does not match `pattern`."""
    _PATTERN_HELP[pattern] = help
    return pattern


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


def _allowed_fields(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """Walk `model` along `loc` (aliases) to the model that rejected an unknown field."""
    from typing import get_args, get_origin

    current: Any = model
    for part in loc[:-1]:
        if current is None:
            return None
        if isinstance(current, type) and issubclass(current, BaseModel):
            by_alias = {(f.alias or n): f for n, f in current.model_fields.items()}
            field = by_alias.get(part)
            if field is None:
                return None
            current = field.annotation
        elif isinstance(part, (int, str)):
            current = current  # list index or dict key: unwrap below
        # unwrap Optional / list / dict to the model inside
        for _ in range(4):
            origin = get_origin(current)
            if origin is None:
                break
            args = [a for a in get_args(current) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if models:
                current = models[0]
                break
            current = args[-1] if args else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return None


def issues_from_validation_error(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[FieldIssue]:
    """Turn pydantic's errors into FieldIssues with dotted camelCase paths and plain messages."""
    issues: list[FieldIssue] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # Drop pydantic's union-member tags such as 'Parameter' or 'list[any]'.
        loc = tuple(p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p)))
        path = _join(prefix, *[f"[{p}]" if isinstance(p, int) else p for p in loc])
        ctx = err.get("ctx") or {}
        error = ctx.get("error")
        if isinstance(error, SemanticErrors):
            issues += [FieldIssue(_join(path, i.path), i.message) for i in error.issues]
            continue
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            msg = "unknown field" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "string_pattern_mismatch":
            msg = _PATTERN_HELP.get(ctx.get("pattern", ""), err["msg"])
        elif kind == "literal_error":
            msg = f"got {err['input']!r}; allowed: {ctx.get('expected', '')}"
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
