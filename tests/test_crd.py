"""The CRD is generated from the model; the committed copy must not drift; the README reference neither."""

from pathlib import Path


from kubetune.api import reference
from kubetune.api.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "crds" / "kubetune.io_tuneexperiments.yaml"


def test_committed_crd_matches_the_model():
    assert COMMITTED.read_text() == crd_yaml(), "run `kubetune crd > crds/kubetune.io_tuneexperiments.yaml`"


def _walk(node, path="$"):
    yield path, node
    for key in ("properties", "additionalProperties"):
        child = node.get(key)
        if isinstance(child, dict):
            if key == "properties":
                for name, sub in child.items():
                    yield from _walk(sub, f"{path}.{name}")
            else:
                yield from _walk(child, f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def test_schema_is_structural():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "additionalProperties" in node:
            assert "properties" not in node, path
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert typed, f"{path} has no type"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), path


def test_crd_names_columns_and_descriptions():
    doc = crd()
    assert doc["metadata"]["name"] == "tuneexperiments.kubetune.io"
    names = doc["spec"]["names"]
    assert names["shortNames"] == ["tunex"] and names["categories"] == ["kubetune"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:3] == ["Phase", "Trials", "Best"] and "Age" in columns
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["trainable", "objective"]
    # kubectl explain needs descriptions on every field
    for path, node in _walk(spec):
        # list items and map values are described by their parent field
        if path != "$" and not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{path} lacks a description"
    assert spec["properties"]["search"]["properties"]["algorithm"]["enum"] == ["random", "grid", "hyperopt", "optuna", "bayesopt"]


def test_readme_spec_reference_is_generated_from_the_model():
    text = (ROOT / "README.md").read_text()
    start, end = text.index(reference.BEGIN), text.index(reference.END) + len(reference.END)
    assert text[start:end] == reference.markdown(), "regenerate with `python -m kubetune.api.reference`"
