"""pytest fixtures for the local Kubernetes control plane (see tests/envtest.py).

Load with ``pytest_plugins = ["tests.envtest_fixtures"]`` in the top-level conftest.

* ``kube`` (session): a running ``KubeControlPlane`` with KubeRay's CRDs (vendored at a pinned
  version in ``<repo>/hack/kuberay/crds``, see its NOTICE.md) and every YAML in ``<repo>/crds/`` applied.
* ``namespace`` (function): a fresh namespace (its ``default`` ServiceAccount exists),
  deleted afterwards.

Also registers the ``kube`` marker.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.envtest import REPO_ROOT, KubeControlPlane, ensure_binaries

# Inside the repository: a fresh clone has everything its tests need (hack/kuberay/refresh.sh updates them).
KUBERAY_CRD_DIR = Path(os.environ.get("KUBETUNE_KUBERAY_CRDS", REPO_ROOT / "hack" / "kuberay" / "crds"))
# Applied: the kinds kubetune creates or may meet (RayService, vendored too, only costs API server start time).
KUBERAY_CRD_FILES = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml")
PROJECT_CRD_DIR = REPO_ROOT / "crds"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kube: needs the local Kubernetes control plane "
        "(etcd + kube-apiserver + kube-controller-manager, tests/envtest.py)",
    )


def crd_files() -> list[Path]:
    """KubeRay CRDs, then the project's own CRDs (<repo>/crds/*.yaml, *.yml)."""
    files = []
    for name in KUBERAY_CRD_FILES:
        path = KUBERAY_CRD_DIR / name
        if not path.is_file():
            raise FileNotFoundError(
                f"KubeRay CRD {path} missing (set KUBETUNE_KUBERAY_CRDS to its directory)"
            )
        files.append(path)
    if PROJECT_CRD_DIR.is_dir():
        files += sorted(
            p for p in PROJECT_CRD_DIR.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
    return files


@pytest.fixture(scope="session")
def kube():
    """A running control plane with the KubeRay and kubetune CRDs Established."""
    if not os.environ.get("KUBETUNE_ENVTEST_BIN"):
        # No-op (well under a second) when the binaries are cached for the pinned version;
        # otherwise installs etcd and builds Kubernetes (many minutes: CI should run
        # hack/envtest/build.sh before pytest).
        ensure_binaries()
    plane = KubeControlPlane()
    t0 = time.monotonic()
    plane.start(crds=crd_files())
    print(
        f"\n[envtest] control plane up at {plane.url} in {time.monotonic() - t0:.1f}s "
        f"({ {k: round(v, 2) for k, v in plane.timings.items()} })",
        file=sys.stderr,
    )
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(kube: KubeControlPlane):
    """A fresh namespace with its default ServiceAccount; deleted after the test."""
    name = kube.create_namespace()
    try:
        yield name
    finally:
        kube.delete_namespace(name)
