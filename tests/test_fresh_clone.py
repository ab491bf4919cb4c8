"""A fresh clone runs its tests with what it carries: no path outside the repository (issue #6, point 11)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml

from tests.conftest import RAY_MISSING_REASON
from tests.envtest import REPO_ROOT
from tests.envtest_fixtures import KUBERAY_CRD_DIR, crd_files

KUBERAY_DIR = REPO_ROOT / "hack" / "kuberay"


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_nothing_reads_a_path_outside_the_repository():
    outside = re.compile(r"""\.\./shared|parent\s*/\s*["']shared["']|/work/""")
    offenders = []
    for rel in _tracked_files():
        if rel.startswith("hack/kuberay/crds/") or not rel.endswith((".py", ".sh", ".toml", ".cfg", ".ini", ".yaml")):
            continue
        path = REPO_ROOT / rel
        if path.is_file() and outside.search(path.read_text(errors="replace")) and rel != "tests/test_fresh_clone.py":
            offenders.append(rel)
    assert offenders == []


def test_the_kuberay_crds_are_vendored_at_a_pinned_version_with_their_licence():
    assert KUBERAY_CRD_DIR == KUBERAY_DIR / "crds"
    for path in crd_files():
        assert path.resolve().is_relative_to(REPO_ROOT.resolve()), f"{path} is outside the repository"
    kinds = set()
    for path in sorted(KUBERAY_CRD_DIR.glob("*.yaml")):
        doc = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if doc["spec"]["group"] == "ray.io":
            kinds.add(doc["spec"]["names"]["kind"])
            assert [v["name"] for v in doc["spec"]["versions"] if v.get("storage")] == ["v1"]
    assert kinds == {"RayCluster", "RayJob", "RayService"}
    assert "Apache License" in (KUBERAY_DIR / "LICENSE").read_text()
    pinned = re.search(r'KUBERAY_VERSION:-(v[0-9.]+)', (KUBERAY_DIR / "refresh.sh").read_text()).group(1)
    assert f"ray-operator@{pinned}" in (KUBERAY_DIR / "NOTICE.md").read_text()


def test_every_extra_that_brings_botocore_pins_dateutil():
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("tune", "test"):  # boto3 and moto bring botocore
        assert any(re.fullmatch(r"python-dateutil\s*<\s*3", dep.split(";")[0].strip()) for dep in extras[name]), name


def test_tests_that_need_ray_skip_with_a_reason_when_it_is_missing(tmp_path):
    # Hide Ray from a child pytest (a meta path finder that refuses it), then run the end-to-end test.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoRay:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, _NoRay())\n")
    env = {"PYTHONPATH": f"{tmp_path}:{REPO_ROOT / 'src'}:{REPO_ROOT / 'trial-image'}", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_operator_kube.py", "-k", "end_to_end"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "1 skipped" in out and RAY_MISSING_REASON in out, out[-3000:]
