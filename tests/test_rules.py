"""One source of truth: every check of the model is in the CRD as CEL, or listed as operator-only with why."""

from typing import get_args

from pydantic import BaseModel

from kubetune.api import semantics
from kubetune.api.crd import crd
from kubetune.api.rules import RULES, expand, rule_of
from kubetune.api.spec import TuneExperiment, TuneExperimentSpec


def models(root=TuneExperiment, seen=None) -> list[type[BaseModel]]:
    seen = seen if seen is not None else []
    if root in seen:
        return seen
    seen.append(root)
    stack = [f.annotation for f in root.model_fields.values()]
    while stack:
        annotation = stack.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            models(annotation, seen)
        stack += list(get_args(annotation))
    return seen


def python_checks():
    """(name, function) of every pydantic validator of every model, and every spec-wide check."""
    found = {}
    for model in models():
        decorators = model.__pydantic_decorators__
        for info in [*decorators.model_validators.values(), *decorators.field_validators.values()]:
            fn = getattr(info.func, "__func__", info.func)
            found[fn.__qualname__] = fn
    # _semantics only runs the spec-wide checks, each of which is registered on its own
    assert "TuneExperimentSpec._semantics" in found
    del found["TuneExperimentSpec._semantics"]
    for fn in semantics.CHECKS:
        found[fn.__qualname__] = fn
    return found


def crd_rules(node, out=None):
    out = out if out is not None else []
    if isinstance(node, dict):
        out += [v["rule"] for v in node.get("x-kubernetes-validations", [])]
        for value in node.values():
            crd_rules(value, out)
    elif isinstance(node, list):
        for value in node:
            crd_rules(value, out)
    return out


def test_every_check_is_in_the_crd_or_operator_only(capsys):
    checks = python_checks()
    in_crd = set(crd_rules(crd()))
    # a check may sit on a base model (RayGroup's carry over to the head and the worker groups)
    by_name = {c.__name__: c for m in models() for c in m.__mro__}
    rows = []
    for name, fn in sorted(checks.items()):
        rule = rule_of(fn)
        assert rule is not None, f"{name} has neither @cel nor @operator_only (kubetune.api.rules)"
        if rule.schema:
            node = schema_of(rule.at)
            assert all(node.get(k) == v for k, v in rule.schema.items()), f"{name}: {rule.schema} not on {rule.at}"
            rows.append((name, f"schema of {rule.at}: {rule.schema}"))
            continue
        if rule.operator_only and not rule.cel:
            assert len(rule.operator_only) > 20, name
            rows.append((name, "operator only: " + rule.operator_only))
            continue
        assert rule.cel, f"{name}: @cel without rules"
        for c in rule.cel:
            assert expand(c.rule, by_name[rule.at]) in in_crd, f"{name}: {c.rule!r} is not in the CRD"
        rows.append((name, f"CEL at {rule.at} ({len(rule.cel)} rule(s))"
                     + (f"; operator only: {rule.operator_only}" if rule.operator_only else "")))
    # nothing registered that is not a check any more
    assert set(RULES) <= set(checks), set(RULES) - set(checks)
    with capsys.disabled():
        print("\ncheck -> where the API server enforces it")
        for name, where in rows:
            print(f"  {name}: {where}")
    assert len(rows) >= 20


def schema_of(model_name: str) -> dict:
    from kubetune.api.crd import openapi_schema

    model = {m.__name__: m for m in models()}[model_name]
    return openapi_schema(model)


def test_the_name_rule_is_at_the_root():
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "self.metadata.name.size() <= 40" in [r["rule"] for r in root["x-kubernetes-validations"]]


def test_defaults_are_spelled_out_for_cel():
    assert expand("@search.algorithm", TuneExperimentSpec) == (
        "(has(self.search) && has(self.search.algorithm) ? self.search.algorithm : \"random\")")
    assert expand("@trainable.entrypoint", TuneExperimentSpec) == "self.trainable.entrypoint"
