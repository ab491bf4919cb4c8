"""Real `helm` for the chart tests: built by hack/helm/build.sh (cached in <repo>/.cache/helm).

`render()` is `helm template` of charts/kubetune; `Helm` runs helm against a test control plane
(tests/envtest.py) with its admin kubeconfig. tests/operator_fixtures.py takes the operator's and the
drivers' RBAC from `render()`, so the operator tests run with exactly what the chart installs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from tests.envtest import REPO_ROOT

CHART = REPO_ROOT / "charts" / "kubetune"
BUILD_SCRIPT = REPO_ROOT / "hack" / "helm" / "build.sh"
HELM_DIR = Path(os.environ.get("KUBETUNE_HELM_DIR", REPO_ROOT / ".cache" / "helm"))
HELM = HELM_DIR / "bin" / "helm"
RELEASE, RELEASE_NAMESPACE = "kubetune", "kubetune-system"


def ensure_helm(timeout: float = 1800) -> Path:
    """Build helm once (a no-op, well under a second, when it is cached for the pinned version)."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}")
    return HELM


@contextlib.contextmanager
def _value_args(values: dict[str, Any] | None, files: Iterable[Path] = ()) -> Iterator[list[str]]:
    """--values arguments; a dict becomes a temporary JSON file (JSON is YAML; no --set quoting)."""
    args = [a for f in files for a in ("--values", str(f))]
    if not values:
        yield args
        return
    fd, path = tempfile.mkstemp(prefix="kubetune-values-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh)
        yield args + ["--values", path]
    finally:
        os.unlink(path)


def helm(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300,
         values: dict[str, Any] | None = None, files: Iterable[Path] = ()) -> subprocess.CompletedProcess:
    with _value_args(values, files) as value_args:
        proc = subprocess.run([str(HELM), *args, *value_args], capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stderr}{proc.stdout[-2000:]}")
    return proc


def render(values: dict[str, Any] | None = None, files: Iterable[Path] = (), namespace: str = RELEASE_NAMESPACE,
           release: str = RELEASE, chart: Path = CHART) -> list[dict[str, Any]]:
    """`helm template` of the chart: its objects (templates only; the CRD is in crds/)."""
    out = helm("template", release, str(chart), "--namespace", namespace, values=values, files=files).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def select(docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


class Helm:
    """helm against a test control plane, as its admin."""

    def __init__(self, kubeconfig: Path):
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig),
                    # helm's own cache/config/data out of the user's home
                    "HELM_CACHE_HOME": str(HELM_DIR / "home" / "cache"),
                    "HELM_CONFIG_HOME": str(HELM_DIR / "home" / "config"),
                    "HELM_DATA_HOME": str(HELM_DIR / "home" / "data")}

    def __call__(self, *args: str, check: bool = True, timeout: float = 300,
                 values: dict[str, Any] | None = None) -> subprocess.CompletedProcess:
        return helm(*args, env=self.env, check=check, timeout=timeout, values=values)

    def install(self, release: str, namespace: str, values: dict[str, Any] | None = None, *extra: str) -> subprocess.CompletedProcess:
        return self("install", release, str(CHART), "--namespace", namespace, "--create-namespace", *extra, values=values)

    def upgrade(self, release: str, namespace: str, values: dict[str, Any] | None = None, *extra: str) -> subprocess.CompletedProcess:
        return self("upgrade", release, str(CHART), "--namespace", namespace, *extra, values=values)

    def uninstall(self, release: str, namespace: str) -> subprocess.CompletedProcess:
        return self("uninstall", release, "--namespace", namespace, "--wait")
