"""The TuneExperiment CRD, generated from the pydantic models (the only source of the schema).

pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3 schema: every node typed,
no $ref, no nullable unions, no `additionalProperties: false`, booleans for exclusive bounds.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from kubetune.api.rules import CEL_RULES_KEY
from kubetune.api.spec import API_GROUP, API_VERSION, KIND, PLURAL, SHORT_NAME, ObjectMeta, TuneExperimentSpec
from kubetune.api.status import TuneExperimentStatus

_KEEP = {
    "type", "description", "properties", "items", "enum", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "required",
    "additionalProperties", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "maxProperties", "minProperties", "x-kubernetes-validations",
}
_PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].split("/")[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """One JSON Schema node -> a structural OpenAPI v3 node."""
    node = dict(node)
    description = node.get("description")
    default = node.get("default")
    if default not in (None, [], {}) and description and "Default" not in description:
        node["description"] = f"{description} Default: {json.dumps(default)}."

    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if node.get("x-kubernetes-int-or-string") or any(o.get("x-kubernetes-int-or-string") for o in options):
            kept = {k: v for o in [node, *options] for k, v in o.items() if k == "maxLength"}
            return {k: v for k, v in {"description": node.get("description"), "x-kubernetes-int-or-string": True,
                                      **kept}.items() if v}
        if len(options) == 1:
            inner = {**options[0], **{k: v for k, v in node.items() if k in ("description",)}}
            return _structural(inner)
        # A value of several shapes (a distribution or a list): validated by the model, kept as is.
        return {k: v for k, v in {"description": node.get("description"), **_PRESERVE}.items() if v}
    if "const" in node:
        node["enum"] = [node.pop("const")]

    out: dict[str, Any] = {}
    kind = node.get("type")
    if kind is None and not node.get("x-kubernetes-int-or-string"):
        return {k: v for k, v in {"description": node.get("description"), **_PRESERVE}.items() if v}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: _structural(child) for name, child in value.items()}
        elif key == "items":
            out[key] = _structural(value) if value else dict(_PRESERVE)
        elif key == "additionalProperties":
            if value is False:
                continue  # pydantic's extra="forbid": a structural schema prunes (or, strict, refuses) unknown fields
            child = _structural(value) if isinstance(value, dict) and value else dict(_PRESERVE)
            if value is True or "type" not in child:
                # a map of untyped values is an object that keeps unknown fields: CEL can test has() on it
                # (it cannot see an untyped map's values at all)
                out.update(_PRESERVE)
            else:
                out[key] = child
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out.update(_PRESERVE)
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    return _structural(_resolve(schema, defs))


def _name_constraints() -> tuple[str, int]:
    """The pattern and length ObjectMeta.name has in the model."""
    pattern = max_length = None
    for item in ObjectMeta.model_fields["name"].metadata:
        pattern = getattr(item, "pattern", None) or pattern
        max_length = getattr(item, "max_length", None) or max_length
    assert pattern and max_length
    return pattern, max_length


def metadata_rules() -> list[dict[str, Any]]:
    """CEL at the root: the name must fit the labels and names of the experiment's children."""
    pattern, max_length = _name_constraints()
    return [
        {"rule": f"self.metadata.name.size() <= {max_length}",
         "message": f"metadata.name: must be at most {max_length} characters (the names and labels of the "
                    "RayCluster and the driver Job derive from it)",
         "reason": "FieldValueInvalid"},
        {"rule": f"self.metadata.name.matches('{pattern}')",
         "message": "metadata.name: must be a DNS label: lowercase letters, digits and -, starting and ending "
                    "with a letter or digit",
         "reason": "FieldValueInvalid"},
    ]


def crd() -> dict[str, Any]:
    spec_schema = openapi_schema(TuneExperimentSpec)
    status_schema = openapi_schema(TuneExperimentStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["kubetune"],
            },
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Trials", "type": "string", "jsonPath": ".status.progress",
                     "description": "Trials done of total"},
                    {"name": "Best", "type": "number", "jsonPath": ".status.bestTrial.metric",
                     "description": "Best objective metric so far"},
                    {"name": "Metric", "type": "string", "jsonPath": ".spec.objective.metric", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A hyperparameter search run by Ray Tune on a KubeRay cluster.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "kubetune.io/v1alpha1"},
                        "kind": {"type": "string", "description": "TuneExperiment"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                    CEL_RULES_KEY: metadata_rules(),
                }},
            }],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `kubetune crd` from kubetune.api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)
