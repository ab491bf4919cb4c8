"""#9 point 1: every document is parsed with limits (bytes, aliases, expanded values, depth) first."""

import pytest
import yaml

from kubetune.api import SpecError
from kubetune.api.load import (
    MAX_ALIASES, MAX_DEPTH, MAX_DOCUMENT_BYTES, check_limits, load_experiment_file, load_spec, parse_documents,
    read_documents,
)
from tests.test_spec import experiment

HEAD = """apiVersion: kubetune.io/v1alpha1
kind: TuneExperiment
metadata: {name: bomb}
spec:
  objective: {metric: acc, mode: max}
  trainable:
    entrypoint: kubetune_trials.mnist:train
    config:
"""


def bomb(levels: int = 9) -> str:
    lines = ['      l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"      l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return HEAD + "\n".join(lines) + "\n"


def issue(exc_info) -> tuple[str, str]:
    [found] = exc_info.value.issues
    return found.path, found.message


def test_alias_bomb_under_trainable_config_is_refused_while_parsing(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())  # 9**9 = 387 million strings once expanded
    with pytest.raises(SpecError) as info:
        load_experiment_file(path)
    where, message = issue(info)
    assert where.startswith("spec.trainable.config.l")
    assert "more than 100,000 values once YAML aliases are expanded" in message


def test_a_few_aliases_are_fine(tmp_path):
    doc = HEAD + "      base: &base {lr: 0.1, layers: [1, 2]}\n      copy: *base\n"
    [loaded] = parse_documents(doc)
    assert loaded["spec"]["trainable"]["config"]["copy"] == {"lr": 0.1, "layers": [1, 2]}
    path = tmp_path / "ok.yaml"
    path.write_text(doc)
    assert load_experiment_file(path).spec.trainable.config["copy"]["lr"] == 0.1


def test_too_many_aliases():
    doc = HEAD + "      a: &a 1\n      b: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(SpecError) as info:
        parse_documents(doc)
    assert f"more than {MAX_ALIASES} YAML aliases" in issue(info)[1]


def test_too_deep():
    doc = HEAD + "      deep: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    with pytest.raises(SpecError) as info:
        parse_documents(doc)
    assert f"nested more than {MAX_DEPTH} levels deep" in issue(info)[1]
    # depth reached through aliases counts too
    nested = "[" * 40 + "1" + "]" * 40
    doc = HEAD + f"      a: &a {nested}\n      b: [[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]\n"
    with pytest.raises(SpecError) as info:
        parse_documents(doc)
    assert "levels deep once YAML aliases are expanded" in issue(info)[1]


def test_recursive_alias():
    with pytest.raises(SpecError) as info:
        parse_documents("a: &a [1, *a]\n")
    assert "recursive" in issue(info)[1]


def test_too_many_bytes(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(HEAD + "      blob: " + "x" * MAX_DOCUMENT_BYTES + "\n")
    with pytest.raises(SpecError) as info:
        read_documents(path)
    assert f"larger than {MAX_DOCUMENT_BYTES:,} bytes" in issue(info)[1]
    with pytest.raises(SpecError, match="a TuneExperiment may be at most"):
        parse_documents(path.read_text())


def test_parsed_documents_are_checked_too():
    # what yaml.safe_load makes of a bomb: shared lists, cheap in memory, huge once serialised
    shared = ["lol"] * 9
    for _ in range(8):
        shared = [shared] * 9
    spec = experiment(trainable={"entrypoint": "a.b:c", "config": {"x": shared}})["spec"]
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    where, message = issue(info)
    assert where.startswith("spec.trainable.config.x[0]") and message == "holds more than 100,000 values"
    check_limits(experiment())  # a normal document passes


def test_set_values_are_parsed_with_limits(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(experiment()))
    exp = load_experiment_file(path, ["spec.trainable.config.layers=[1, 2]", "spec.search.seed=null"])
    assert exp.spec.trainable.config["layers"] == [1, 2]
    with pytest.raises(SpecError, match="recursive"):
        load_experiment_file(path, ["spec.trainable.config.x=&a [*a]"])


def test_parsed_documents_are_measured_in_bytes_too():
    spec = experiment(trainable={"entrypoint": "a.b:c", "config": {"blob": "x" * MAX_DOCUMENT_BYTES}})["spec"]
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    where, message = issue(info)
    assert where == "spec" and message.startswith("is 1,048,") and "at most 1,048,576" in message


def test_validate_and_the_driver_refuse_the_bomb(tmp_path, capsys):
    from kubetune.cli import main
    from kubetune.driver_main import load_driver_experiment

    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert main(["validate", str(path)]) != 0
    assert "once YAML aliases are expanded" in capsys.readouterr().err
    with pytest.raises(SpecError, match="once YAML aliases are expanded"):
        load_driver_experiment(str(path), None, None)
