"""The two images, built from the Dockerfile by buildah (hack/images/build.sh), and what each holds.

No Docker engine, no registry: a stand-in for python:3.11-slim-bookworm made with debootstrap, then
`buildah bud --target operator|trial`, exported as OCI archives into .cache/images. Each image is
then run with `buildah run` (chroot isolation) as its own USER.

Cost: cold, the trial image is gigabytes (CUDA torch) and takes many minutes to download and
commit; warm (nothing changed) the build script takes seconds. Marked `images`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.envtest import REPO_ROOT

# The first test waits for the build: a cold one downloads gigabytes (pytest's default timeout is 900 s).
pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(3 * 3600)]

CACHE = Path(os.environ.get("KUBETUNE_IMAGES_DIR", REPO_ROOT / ".cache" / "images"))
TAG = os.environ.get("KUBETUNE_IMAGE_TAG", "dev")
UID = "1000"


def store() -> list[str]:
    """The store build.sh used (overlay where it can mount one, else vfs; it writes which)."""
    driver = (CACHE / "DRIVER").read_text().strip()
    return ["--root", str(CACHE / f"storage-{driver}"), "--runroot", str(CACHE / f"run-{driver}"), "--storage-driver", driver]


def buildah(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["buildah", *store(), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
    return proc


@pytest.fixture(scope="session")
def images(built_images) -> dict[str, str]:
    """Both targets, built (or reused: the script is cached) by the session's `built_images`; target -> image name."""
    return {t: f"localhost/kubetune-{t}:{TAG}" for t in ("operator", "trial")}


def run_in(image: str, script: str, timeout: float = 900) -> str:
    """Run `sh -c script` in a container of `image` as the image's own USER; its output."""
    ctr = buildah("from", "--pull=never", image).stdout.strip().splitlines()[-1]
    try:
        proc = buildah("run", "--isolation", "chroot", ctr, "--", "sh", "-c", script, timeout=timeout, check=False)
        assert proc.returncode == 0, f"in {image}: {script}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        return proc.stdout
    finally:
        buildah("rm", ctr, check=False)


def config(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["config"]


@pytest.mark.parametrize("target", ["operator", "trial"])
def test_oci_archive_is_exported_and_runs_as_non_root(images, target):
    archive = CACHE / f"kubetune-{target}.tar"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert {"oci-layout", "index.json"} <= names
        index = json.load(tar.extractfile("index.json"))
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == f"kubetune-{target}:{TAG}"
    assert config(images[target])["User"] == f"{UID}:{UID}"
    out = run_in(images[target], "id -u && kubetune --help")
    uid, help_text = out.split("\n", 1)
    assert uid == UID
    assert "kubetune" in help_text and "operator" in help_text
    print(f"\n[images] {target}: OCI archive {archive.stat().st_size / 2**20:.0f} MiB")


def test_operator_image_has_no_ray_and_no_torch(images):
    out = run_in(images["operator"], "python -c \"import importlib.util as u, json; "
                 "print(json.dumps({m: u.find_spec(m) is not None for m in ('ray', 'torch', 'kopf', 'kubetune.controller')}))\""
                 " && kubetune operator --help")
    found = json.loads(out.splitlines()[0])
    assert found == {"ray": False, "torch": False, "kopf": True, "kubetune.controller": True}
    assert config(images["operator"])["Entrypoint"] == ["kubetune", "operator"]


RAY_DEFAULT_CHECK = """
import importlib.metadata as md, json, re
from packaging.requirements import Requirement
missing = []
for spec in md.requires("ray") or []:
    req = Requirement(spec)
    if req.marker and req.marker.evaluate({"extra": "default"}) and not req.marker.evaluate({"extra": ""}):
        try:
            md.version(req.name)
        except md.PackageNotFoundError:
            missing.append(req.name)
import torch, torchvision, ray, kubetune_trials.mnist, kubetune.tune.driver
print(json.dumps({"ray": ray.__version__, "torch": torch.__version__, "missing": missing}))
"""


def test_trial_image_holds_torch_ray_default_and_wget(images):
    out = run_in(images["trial"], f"wget --version | head -1 && python - <<'EOF'\n{RAY_DEFAULT_CHECK}\nEOF")
    wget_line, result = out.splitlines()[0], json.loads(out.splitlines()[-1])
    assert wget_line.startswith("GNU Wget")
    assert result["missing"] == [], f"ray[default] incomplete (KubeRay's probes need its dashboard agent): {result['missing']}"
    pins = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"ray[tune]=={result['ray']}" in pins["tune"] and f"torch=={result['torch'].split('+')[0]}" in pins["trials"]
    assert config(images["trial"])["WorkingDir"] == "/home/kubetune"
