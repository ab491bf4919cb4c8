"""The house: Dockerfiles lint clean, the layers keep their imports, no package shadows `operator`."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_dockerfiles_pass_hadolint():
    for dockerfile in [ROOT / "Dockerfile", *ROOT.glob("*/Dockerfile")]:
        result = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_yaml_files_pass_yamllint():
    targets = [p for p in ("examples", "operator", "crds") if (ROOT / p).exists()]
    config = "{extends: relaxed, rules: {line-length: {max: 160}}}"
    result = subprocess.run([str(BIN / "yamllint"), "-s", "-d", config, *targets], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(package: Path) -> set[str]:
    names = set()
    for file in package.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


def test_layers_import_only_what_they_may():
    src = ROOT / "src" / "kubetune"
    api = _imports(src / "api")
    assert not {n for n in api if n.split(".")[0] in ("ray", "torch", "kopf", "kubernetes")}
    assert not {n for n in api if n.startswith(("kubetune.tune", "kubetune.controller", "kubetune.cli"))}
    if (src / "controller").exists():
        controller = _imports(src / "controller")
        assert not {n for n in controller if n.split(".")[0] in ("ray", "torch")}, "the operator never imports Ray or torch"
        assert not {n for n in controller if n.startswith("kubetune.tune")}
    tune = _imports(src / "tune")
    assert not {n for n in tune if n.split(".")[0] == "kopf" or n.startswith("kubetune.controller")}


def test_no_package_is_named_operator():
    for init in ROOT.rglob("__init__.py"):
        if ".venv" in init.parts or ".cache" in init.parts:
            continue
        assert init.parent.name != "operator", init


def test_operator_extra_needs_neither_ray_nor_torch():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    operator = " ".join(extras["operator"])
    assert "ray" not in operator and "torch" not in operator


def _file_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_metrics_module_imports_only_prometheus_client():
    """The operator (no Ray, no torch) and the driver share kubetune.metrics; the trial helpers load nothing heavy."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    src = ROOT / "src" / "kubetune"
    assert _file_imports(src / "metrics.py") - stdlib == {"prometheus_client"}
    assert _file_imports(src / "dashboards.py") - stdlib == {"kubetune"}
    assert _file_imports(src / "trial_stats.py") - stdlib == set()
