"""Patch a TuneExperiment's status from the driver pod with plain HTTPS (no `kubernetes` package).

The driver runs in the trial image, which installs the `tune` and `trials` extras only. The official
client would add it plus google-auth, requests-oauthlib, websocket-client and a `python-dateutil` that
botocore refuses; the driver needs one request (a merge patch of the status subresource), which the
standard library does with the pod's service-account token. Outside a pod the same request goes
through the current context of a kubeconfig (KUBECONFIG or ~/.kube/config) that has a bearer token
(a service account's, as the tests use) or a client certificate.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SA_DIR_ENV = "KUBETUNE_SERVICE_ACCOUNT_DIR"  # tests point it at a minted token; pods have the default
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeConfigError(Exception):
    """No way to reach the API server: not in a pod and no usable kubeconfig."""


@dataclass
class ApiServer:
    server: str
    context: ssl.SSLContext | None
    token: str | None = None
    token_file: str | None = None  # re-read on every request: projected tokens rotate

    def _headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file:
            token = Path(self.token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                timeout: float = 10.0) -> Any:
        data = json.dumps(body, allow_nan=False).encode() if body is not None else None
        req = urllib.request.Request(self.server.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json",
                                              **self._headers()})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.context) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("message", detail)
            except ValueError:
                pass
            raise OSError(f"{method} {path}: {exc.code} {detail[:300]}") from None

    def patch_status(self, group: str, version: str, namespace: str, plural: str, name: str,
                     status: dict[str, Any]) -> Any:
        path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status"
        return self.request("PATCH", path, {"status": status}, content_type="application/merge-patch+json")


def _ssl_context(ca_file: str | None = None, ca_data: bytes | None = None, insecure: bool = False) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=ca_file, cadata=ca_data.decode() if ca_data else None)
    return ctx


def in_cluster() -> ApiServer | None:
    """The API server as a pod sees it (KUBERNETES_SERVICE_HOST and the mounted service account)."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    sa_dir = Path(os.environ.get(SA_DIR_ENV) or SA_DIR)
    token = sa_dir / "token"
    if not host or not token.is_file():
        return None
    host = f"[{host}]" if ":" in host else host
    ca = sa_dir / "ca.crt"
    return ApiServer(f"https://{host}:{port}", _ssl_context(str(ca) if ca.is_file() else None),
                     token_file=str(token))


def from_kubeconfig(path: str | None = None) -> ApiServer:
    """The current context of a kubeconfig (the first file of KUBECONFIG, else ~/.kube/config)."""
    import yaml

    path = path or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise KubeConfigError(f"not in a pod and no kubeconfig at {path}: {exc.strerror}") from None
    base = Path(path).parent

    def named(kind: str, name: str) -> dict[str, Any]:
        for item in config.get(kind) or []:
            if item.get("name") == name:
                return item.get(kind[:-1]) or {}
        raise KubeConfigError(f"{path}: no {kind[:-1]} named {name!r}")

    context = named("contexts", config.get("current-context", ""))
    cluster, user = named("clusters", context.get("cluster", "")), named("users", context.get("user", ""))
    server = cluster.get("server")
    if not server:
        raise KubeConfigError(f"{path}: the current context's cluster has no server")
    ca_data = base64.b64decode(cluster["certificate-authority-data"]) if cluster.get("certificate-authority-data") else None
    ca_file = str(base / cluster["certificate-authority"]) if cluster.get("certificate-authority") else None
    ctx = _ssl_context(ca_file, ca_data, bool(cluster.get("insecure-skip-tls-verify"))) if server.startswith("https") else None
    if ctx is not None and (user.get("client-certificate-data") or user.get("client-certificate")):
        cert, key = _material(user, "client-certificate", base), _material(user, "client-key", base)
        ctx.load_cert_chain(cert, key)
    token_file = str(base / user["tokenFile"]) if user.get("tokenFile") else None
    if not (user.get("token") or token_file or user.get("client-certificate-data") or user.get("client-certificate")):
        raise KubeConfigError(f"{path}: the current user has no token or client certificate "
                              "(exec and auth-provider plugins need the 'operator' extra's kubernetes client)")
    return ApiServer(server, ctx, token=user.get("token"), token_file=token_file)


def _material(user: dict[str, Any], key: str, base: Path) -> str:
    if user.get(f"{key}-data"):
        fd, name = tempfile.mkstemp(prefix="kubetune-", suffix=".pem")
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64decode(user[f"{key}-data"]))
        return name
    return str(base / user[key])


def connect() -> ApiServer:
    """In a pod: its service account; elsewhere: the kubeconfig."""
    return in_cluster() or from_kubeconfig()
