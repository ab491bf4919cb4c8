import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest_plugins = ["tests.envtest_fixtures", "tests.operator_fixtures", "tests.cluster", "tests.cluster_flow"]

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def ray_missing() -> bool:
    """Is Ray not installed (e.g. only the operator's and test extras)? Checked without importing it."""
    try:
        return importlib.util.find_spec("ray") is None
    except ImportError:
        return True


RAY_MISSING_REASON = "Ray is not installed (pip install 'kubetune[tune]'): this test runs a real Ray"


def pytest_collection_modifyitems(config, items):
    """The image and cluster tests run last: `./dev test` builds what they need in the background while
    the others run. Tests marked `ray` or using the `ray_local` fixture skip, with the reason, when Ray
    is missing."""
    def late(item) -> int:
        return 2 if item.get_closest_marker("cluster") else 1 if item.get_closest_marker("images") else 0

    items.sort(key=late)  # stable: the order within each group stays
    if not ray_missing():
        return
    skip = pytest.mark.skip(reason=RAY_MISSING_REASON)
    for item in items:
        if item.get_closest_marker("ray") or "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray (2 CPUs) for the in-process driver tests; shut down at the end."""
    from kubetune.tune.driver import ensure_ray

    import ray

    started = ensure_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(autouse=True)
def ray_state_before_timeout(request):
    """For tests on the embedded Ray: if one is still running shortly before its timeout, print what Ray
    holds and the end of each Ray worker's log (pytest-timeout shows only this process's stacks, and a
    hang is mostly in another process: a trial, a Train controller, a worker)."""
    if "ray_local" not in request.fixturenames:
        yield
        return
    import threading

    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 900)
    timer = threading.Timer(max(timeout - 120, timeout * 0.6), print_ray_state, args=(request.node.nodeid,))
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


def print_ray_state(nodeid: str, lines: int = 15, files: int = 40) -> None:
    import ray
    from ray.util import placement_group_table

    out = [f"=== {nodeid} still running: Ray's state", f"free: {ray.available_resources()}"]
    with contextlib.suppress(Exception):
        out += [f"placement group {pg_id[:8]}: {pg['state']} {pg['bundles']}" for pg_id, pg in placement_group_table().items()]
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in sorted(logs.glob("worker-*.err"), key=lambda p: p.stat().st_mtime)[-files:]:  # the latest
        text = path.read_text(errors="replace").splitlines()
        names = [line for line in text if line.startswith(":actor_name:")]
        out += [f"--- {path.name} {' '.join(names)}", *[line for line in text[-lines:] if line not in names]]
    print("\n".join(out), file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode on 127.0.0.1: a real S3 HTTP API; yields (endpoint, env with credentials)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    env = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key", "AWS_DEFAULT_REGION": "us-east-1"}
    yield endpoint, env
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    import uuid

    import boto3

    endpoint, env = s3_server
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    name = f"kubetune-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return endpoint, name, client


# Every process this test session starts inherits this marker, so the leftover check below never
# touches Ray processes of anything else running on the machine.
SESSION_MARK = f"KUBETUNE_TEST_SESSION={os.getpid()}-{time.time_ns()}"
os.environ[SESSION_MARK.split("=")[0]] = SESSION_MARK.split("=")[1]


def _ray_processes() -> dict[int, str]:
    """pid -> command line of this session's Ray processes (not zombies)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ")[1][0]
            if not ("gcs_server" in cmd or "raylet" in cmd or cmd.startswith("ray::")) or state == "Z":
                continue
            if SESSION_MARK.encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        found[int(entry.name)] = cmd[:120]
    return found


@pytest.fixture(scope="session", autouse=True)
def no_processes_left_behind():
    """Tests leave no Ray processes behind: anything left at the end is killed and reported."""
    yield
    import signal

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        leftover = _ray_processes()
        if not leftover:
            return
        time.sleep(0.5)
    for pid in leftover:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pytest.fail(f"tests left Ray processes behind (killed now): {leftover}", pytrace=False)
