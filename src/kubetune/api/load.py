"""Reading TuneExperiment documents from YAML with errors that name the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from kubetune.api.errors import FieldIssue, SpecError
from kubetune.api.spec import TuneExperiment, TuneExperimentSpec


def load_experiment(document: Any, source: str | None = None) -> TuneExperiment:
    """Validate one parsed document; raise SpecError listing every problem."""
    if not isinstance(document, dict):
        raise SpecError([FieldIssue("", f"expected a mapping (a TuneExperiment), got {type(document).__name__}")], source)
    try:
        return TuneExperiment.model_validate(document)
    except ValidationError as exc:
        raise SpecError(issues_of(exc, model=TuneExperiment), source) from None


def load_spec(spec: Any, source: str | None = None) -> TuneExperimentSpec:
    """Validate just a spec (as the operator gets it from the API server)."""
    try:
        return TuneExperimentSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(issues_of(exc, prefix="spec", model=TuneExperimentSpec), source) from None


def issues_of(exc: ValidationError, prefix: str = "", model=None) -> list[FieldIssue]:
    from kubetune.api.errors import issues_from_validation_error

    return issues_from_validation_error(exc, prefix=prefix, model=model)


def read_documents(path: str | Path) -> list[Any]:
    """All YAML documents in a file (empty ones skipped); YAML errors become SpecErrors."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([FieldIssue("", f"cannot read file: {exc.strerror}")], str(path)) from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError([FieldIssue("", f"not valid YAML: {exc}")], str(path)) from None


def load_experiment_file(path: str | Path, overrides: Iterable[str] = ()) -> TuneExperiment:
    """Load the single TuneExperiment in `path`, after `--set path=value` overrides."""
    every = read_documents(path)
    docs = [d for d in every if not (isinstance(d, dict) and d.get("kind") not in (None, "TuneExperiment"))]
    if not docs and len(every) == 1:
        docs = every  # one document of another kind: validating it says what is wrong (e.g. the kind)
    if len(docs) != 1:
        kinds = sorted({str(d.get("kind")) for d in every if isinstance(d, dict)})
        found = f"found {len(docs)}" + (f" among {len(every)} document(s) of kind {', '.join(kinds)}" if every else "")
        raise SpecError([FieldIssue("", f"expected one TuneExperiment document, {found}")], str(path))
    if not isinstance(docs[0], dict):
        return load_experiment(docs[0], str(path))
    return load_experiment(apply_overrides(docs[0], overrides), str(path))


def apply_overrides(document: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML), as helm's --set does."""
    document = copy.deepcopy(document)
    for item in overrides:
        if "=" not in item:
            raise SpecError([FieldIssue("", f"--set expects path=value, got {item!r}")])
        path, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = document
        keys = path.split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return document
