"""Each Python check of the spec next to its CEL twin, so `kubectl apply` refuses what the model refuses.

A check is a pydantic validator in spec.py or a function in semantics.py. `@cel(...)` on it registers
the CEL rules (`x-kubernetes-validations`) that the CRD carries on the schema node of the check's model;
`@operator_only(reason)` says why CEL cannot express it (the operator still refuses it, with
`SpecValid=False`). tests/test_rules.py proves that every check is registered one way or the other.

In a rule, `@a.b` stands for the field `self.a.b` with the model's default when it is unset (the CRD
has no defaults, so CEL sees what the user wrote): `(has(self.a) && has(self.a.b) ? self.a.b : 'x')`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, get_args

CEL_RULES_KEY = "x-kubernetes-validations"


@dataclass(frozen=True)
class Cel:
    """One CEL rule: `rule` must hold; else the API server answers `message` at `field_path`.

    `message` is plain text. A `message_expression` (CEL) may add the offending value, but only a
    bounded string: the API server estimates `string(number)` and joins over map keys as unbounded
    and refuses the whole CRD for its cost.
    """

    rule: str
    message: str
    field_path: str | None = None  # relative to the node, e.g. ".max"
    message_expression: str | None = None


@dataclass(frozen=True)
class Rule:
    check: str  # the Python check's qualified name, e.g. "Range._ordered"
    at: str  # the model whose schema node carries the CEL
    cel: tuple[Cel, ...] = ()
    operator_only: str | None = None  # why CEL cannot express the check (or the part it leaves out)
    schema: dict[str, Any] | None = None  # OpenAPI keywords that enforce it instead of CEL


RULES: dict[str, Rule] = {}


def _name(fn: Any) -> str:
    fn = getattr(fn, "__func__", fn)
    return fn.__qualname__


def cel(*rules: Cel, at: str | None = None, except_for: str | None = None) -> Callable:
    """Register `rules` as the CEL twin of the decorated check (at its class, or at model `at`);
    `except_for` says which part of the check CEL cannot express, and why."""

    def wrap(fn):
        name = _name(fn)
        RULES[name] = Rule(check=name, at=at or name.split(".")[0], cel=rules, operator_only=except_for)
        return fn

    return wrap


def in_schema(keywords: dict[str, Any], at: str | None = None) -> Callable:
    """Register the decorated check as enforced by OpenAPI keywords on its model's schema node."""

    def wrap(fn):
        name = _name(fn)
        RULES[name] = Rule(check=name, at=at or name.split(".")[0], schema=keywords)
        return fn

    return wrap


def operator_only(reason: str, at: str | None = None) -> Callable:
    """Register the decorated check as one the API server cannot run, and why."""

    def wrap(fn):
        name = _name(fn)
        RULES[name] = Rule(check=name, at=at or name.split(".")[0], operator_only=reason)
        return fn

    return wrap


def rule_of(fn: Any) -> Rule | None:
    return RULES.get(_name(fn))


# ---------------------------------------------------------------- CEL generation


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    raise ValueError(f"no CEL literal for default {value!r}")


def _field(model: Any, alias: str):
    for name, info in model.model_fields.items():
        if (info.alias or name) == alias:
            return info
    raise KeyError(f"{model.__name__} has no field {alias!r}")


def expand(expression: str, model: Any) -> str:
    """Replace each `@a.b` by the field with its default when unset (see the module's docstring)."""
    from pydantic import BaseModel

    def one(match: re.Match) -> str:
        parts = match.group(1).split(".")
        current, guards, default = model, [], None
        for i, part in enumerate(parts):
            info = _field(current, part)
            path = "self." + ".".join(parts[: i + 1])
            if not info.is_required():
                guards.append(f"has({path})")
            if i == len(parts) - 1:
                default = None if info.is_required() else info.get_default(call_default_factory=True)
            else:
                current = next(a for a in (info.annotation, *get_args(info.annotation))
                               if isinstance(a, type) and issubclass(a, BaseModel))
        full = "self." + ".".join(parts)
        if not guards:
            return full
        if default is None:
            raise ValueError(f"@{match.group(1)} has no default; write has() yourself")
        return f"({' && '.join(guards)} ? {full} : {_literal(default)})"

    return re.sub(r"@([A-Za-z][\w.]*)", one, expression)


def validations_for(model: type) -> list[dict[str, Any]]:
    """The `x-kubernetes-validations` of `model`'s schema node (its own checks and inherited ones)."""
    names = [c.__name__ for c in model.__mro__]
    out: list[dict[str, Any]] = []
    for rule in RULES.values():
        if rule.at not in names:
            continue
        for c in rule.cel:
            entry = {"rule": expand(c.rule, model), "message": c.message}
            if c.message_expression:
                entry["messageExpression"] = expand(c.message_expression, model)
            if c.field_path:
                entry["fieldPath"] = c.field_path
            if entry not in out:
                out.append(entry)
    return out


def add_validations(schema: dict[str, Any], model: type) -> None:
    """pydantic's json_schema_extra hook: put the model's CEL rules on its schema node."""
    rules = validations_for(model)
    if rules:
        schema[CEL_RULES_KEY] = rules
    names = [c.__name__ for c in model.__mro__]
    for rule in RULES.values():
        if rule.schema and rule.at in names:
            schema.update(rule.schema)
