"""Reading TuneExperiment documents from YAML with errors that name the field.

Every document is parsed with limits before anything else looks at it (`parse_documents`, used by
the CLI, the driver and the operator alike): its size in bytes, how many aliases it uses, how many
values it holds once aliases are expanded, and how deeply it nests. An alias bomb is refused while
parsing, in milliseconds, instead of growing in memory when the spec is validated or serialised.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from kubetune.api.errors import FieldIssue, SpecError
from kubetune.api.spec import TuneExperiment, TuneExperimentSpec


MAX_DOCUMENT_BYTES = 1024 * 1024  # a TuneExperiment must fit an etcd object (1.5 MiB) with room to spare
MAX_ALIASES = 100  # alias uses (*name) per file
MAX_VALUES = 100_000  # scalars, lists and maps in one document, aliases expanded
MAX_DEPTH = 64  # nesting of lists and maps, aliases expanded


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that counts aliases and nesting while it composes the node graph."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _Limit(f"more than {MAX_ALIASES} YAML aliases (line {mark.line + 1}); write the values out")
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Limit(f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Limit(Exception):
    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message, self.path = message, path


def _key_text(node: Any) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


def _child(path: str, name: str) -> str:
    return f"{path}{name}" if name.startswith("[") or not path else f"{path}.{name}"


def _measure(node: Any, path: str, depth: int, memo: dict[int, tuple[int, int]], active: set[int]) -> tuple[int, int]:
    """(values, height) of a composed node with aliases expanded; shared nodes are measured once."""
    key = id(node)
    if key in active:
        raise _Limit("a YAML alias refers to a node that contains it (a recursive document)", path)
    count, height = memo.get(key, (0, 0))
    if depth + height > MAX_DEPTH:
        raise _Limit(f"nested more than {MAX_DEPTH} levels deep once YAML aliases are expanded", path)
    if key in memo:
        return memo[key]
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = [(f"[{i}]", child) for i, child in enumerate(node.value)]
    elif isinstance(node, yaml.MappingNode):
        children = [(_key_text(k), v) for k, v in node.value] + [("<key>", k) for k, _ in node.value]
    else:
        children = []
    count, height = 1, 0
    for name, child in children:
        c, h = _measure(child, _child(path, name), depth + 1, memo, active)
        count, height = count + c, max(height, h + 1)
        if count > MAX_VALUES:
            raise _Limit(f"holds more than {MAX_VALUES:,} values once YAML aliases are expanded (an alias bomb?)", path)
    active.discard(key)
    memo[key] = (count, height)
    return count, height


def parse_documents(text: str | bytes, source: str | None = None) -> list[Any]:
    """Every YAML (or JSON) document in `text`, parsed within the limits above; SpecError otherwise.

    The one way kubetune reads a spec from text: `kubetune run`/`validate`, the driver and the operator.
    """
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_DOCUMENT_BYTES:
        raise SpecError([FieldIssue("", f"the file is {size:,} bytes; a TuneExperiment may be at most {MAX_DOCUMENT_BYTES:,}")], source)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    loader = _LimitedLoader(text)
    docs = []
    try:
        while loader.check_node():
            node = loader.get_node()
            _measure(node, "", 0, {}, set())
            docs.append(loader.construct_document(node))
    except _Limit as exc:
        raise SpecError([FieldIssue(exc.path, exc.message)], source) from None
    except yaml.YAMLError as exc:
        raise SpecError([FieldIssue("", f"not valid YAML: {exc}")], source) from None
    finally:
        loader.dispose()
    return [d for d in docs if d is not None]


def check_limits(document: Any, source: str | None = None, prefix: str = "") -> None:
    """The same limits on an already parsed document (the operator gets JSON from the API server)."""
    memo: dict[int, tuple[int, int]] = {}

    def walk(value: Any, path: str, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise _Limit(f"nested more than {MAX_DEPTH} levels deep", path)
        if not isinstance(value, (dict, list)):
            return 1, 0
        if id(value) in memo:  # shared (YAML aliases): measured once; JSON has no sharing
            count, height = memo[id(value)]
            if depth + height > MAX_DEPTH:
                raise _Limit(f"nested more than {MAX_DEPTH} levels deep", path)
            return count, height
        memo[id(value)] = (1, 0)  # a cycle is cut here
        items = value.items() if isinstance(value, dict) else ((f"[{i}]", v) for i, v in enumerate(value))
        count, height = 1, 0
        for key, child in items:
            c, h = walk(child, _child(path, str(key)), depth + 1)
            count, height = count + c, max(height, h + 1)
            if count > MAX_VALUES:
                raise _Limit(f"holds more than {MAX_VALUES:,} values", path)
        memo[id(value)] = (count, height)
        return count, height

    try:
        walk(document, prefix, 0)
    except _Limit as exc:
        raise SpecError([FieldIssue(exc.path, exc.message)], source) from None
    # Within the value limit, serialising is cheap; the bytes are what a ConfigMap and etcd must hold.
    size = len(json.dumps(document, default=str, separators=(",", ":")))
    if size > MAX_DOCUMENT_BYTES:
        raise SpecError([FieldIssue(prefix, f"is {size:,} bytes as JSON; a TuneExperiment may be at most {MAX_DOCUMENT_BYTES:,}")], source)


def load_experiment(document: Any, source: str | None = None) -> TuneExperiment:
    """Validate one parsed document; raise SpecError listing every problem."""
    check_limits(document, source)
    if not isinstance(document, dict):
        raise SpecError([FieldIssue("", f"expected a mapping (a TuneExperiment), got {type(document).__name__}")], source)
    try:
        return TuneExperiment.model_validate(document)
    except ValidationError as exc:
        raise SpecError(issues_of(exc, model=TuneExperiment), source) from None


def load_spec(spec: Any, source: str | None = None) -> TuneExperimentSpec:
    """Validate just a spec (as the operator gets it from the API server)."""
    check_limits(spec, source, prefix="spec")
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
        with path.open("rb") as fh:
            data = fh.read(MAX_DOCUMENT_BYTES + 1)  # never read more than the limit
    except OSError as exc:
        raise SpecError([FieldIssue("", f"cannot read file: {exc.strerror}")], str(path)) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SpecError([FieldIssue("", f"the file is larger than {MAX_DOCUMENT_BYTES:,} bytes, the most a TuneExperiment may be")], str(path))
    return parse_documents(data, str(path))


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
        parsed = parse_documents(raw, f"--set {path}") if raw != "" else [""]
        value = parsed[0] if parsed else None
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
