"""Where an experiment keeps its state: a local directory or S3 through a pyarrow filesystem.

Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)
or from a mounted Secret directory (KUBETUNE_S3_SECRET_DIR, one file per key); they never enter the
spec, a log line or a status.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from kubetune.api.spec import AWS_METADATA_ENV, Storage

DEFAULT_LOCAL_ROOT = "kubetune-results"
SECRET_DIR_ENV = "KUBETUNE_S3_SECRET_DIR"
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class StorageError(Exception):
    """Storage that cannot be used; the message names the endpoint or path, never a credential."""


@dataclass(frozen=True)
class ResolvedStorage:
    """storage_path and storage_filesystem for Ray's RunConfig, plus a display URI."""

    root: str  # path inside `filesystem` (bucket/prefix for S3, an absolute directory locally)
    filesystem: pafs.FileSystem | None
    uri: str
    endpoint: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def experiment_path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def experiment_uri(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"

    def fs(self) -> pafs.FileSystem:
        return self.filesystem or pafs.LocalFileSystem()

    def write_json(self, relative: str, data: Any) -> None:
        path = f"{self.root.rstrip('/')}/{relative}"
        fs = self.fs()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(json.dumps(json_safe(data), indent=2, default=str, allow_nan=False).encode())

    def read_json(self, relative: str) -> Any | None:
        path = f"{self.root.rstrip('/')}/{relative}"
        try:
            with self.fs().open_input_stream(path) as stream:
                return json.loads(stream.read())
        except (FileNotFoundError, OSError):
            return None


def json_safe(data: Any) -> Any:
    """`data` with inf and NaN as the strings "inf", "-inf", "nan": strict JSON (the API server and
    most JSON parsers refuse the bare `Infinity` and `NaN` that Python writes)."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def read_credentials(env: dict[str, str] | None = None) -> dict[str, str]:
    """S3 credentials from the environment, else from files in KUBETUNE_S3_SECRET_DIR."""
    env = dict(os.environ if env is None else env)
    creds = {k: env[k] for k in CREDENTIAL_KEYS if env.get(k)}
    secret_dir = env.get(SECRET_DIR_ENV)
    if secret_dir and Path(secret_dir).is_dir():
        for key in CREDENTIAL_KEYS:
            file = Path(secret_dir) / key
            if key not in creds and file.is_file():
                creds[key] = file.read_text().strip()
    return creds


def export_credentials() -> None:
    """Put credentials from a mounted Secret directory into this process's environment.

    The filesystem is then built *without* explicit keys: Ray pickles it into the experiment
    state it writes to storage and ships it to every trial, and a pickled S3FileSystem carries
    any keys it was given. Without them it carries none, and each process (driver, Ray workers
    started afterwards, trial pods with the Secret as environment) reads its own.
    """
    for key, value in read_credentials().items():
        os.environ.setdefault(key, value)


METADATA_ENV = AWS_METADATA_ENV


def skip_instance_metadata(storage: Storage, env: dict[str, str] | None = None) -> bool:
    """Whether this process may turn the EC2 instance metadata service off (Storage.skips_instance_metadata),
    with the credentials its environment or mounted Secret holds; a value the user set is left alone."""
    env = os.environ if env is None else env
    if METADATA_ENV in env:
        return False
    has_keys = bool(read_credentials(dict(env)).get("AWS_ACCESS_KEY_ID")) or bool(env.get("AWS_WEB_IDENTITY_TOKEN_FILE"))
    return storage.skips_instance_metadata(has_keys)


RAY_STORAGE_MARKER = ".validate_storage_marker"  # ray.train._internal.storage._VALIDATE_STORAGE_MARKER_FILENAME


class S3WithoutDirectoryMarkers(pafs.FileSystemHandler):
    """pyarrow's S3 filesystem, less the empty "dir/" objects it puts for every directory it creates.

    S3 has no directories: a prefix with objects under it reads as one anyway. Ray and pyarrow's
    copy_files create the experiment's, each trial's and each checkpoint's directories, recursively,
    before every upload; in pyarrow that is a HEAD of the bucket plus one PUT per level, each time:
    about 1,100 of the quickstart's 1,847 requests (FIFO, on moto). Reads, listings, writes and
    deletes go to pyarrow's own S3 code unchanged (a delete still leaves its parent's marker), except
    that Ray's storage marker file, once seen, is not looked up again.
    """

    def __init__(self, s3: pafs.S3FileSystem):
        self.s3 = s3
        self._markers: dict[str, pafs.FileInfo] = {}  # Ray's storage marker files seen, by path

    def __getstate__(self) -> dict:  # a copy (Ray ships the filesystem to every trial) starts afresh
        return {"s3": self.s3}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["s3"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3WithoutDirectoryMarkers) and self.s3.equals(other.s3)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "s3"

    def normalize_path(self, path):
        return self.s3.normalize_path(path)

    def create_dir(self, path, recursive):
        pass

    def get_file_info(self, paths):
        # Ray looks its marker file up (a HEAD) before every checkpoint upload, on the trial's own thread,
        # to catch a local storage path that a worker node cannot see; on S3, once found it stays.
        if paths and all(path in self._markers for path in paths):
            return [self._markers[path] for path in paths]
        infos = self.s3.get_file_info(paths)
        for info in infos:
            if info.base_name == RAY_STORAGE_MARKER and info.type == pafs.FileType.File:
                self._markers[info.path] = info
        return infos

    def get_file_info_selector(self, selector):
        return self.s3.get_file_info(selector)

    def delete_dir(self, path):
        self.s3.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.s3.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.s3.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.s3.delete_file(path)

    def move(self, src, dest):
        self.s3.move(src, dest)

    def copy_file(self, src, dest):
        self.s3.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.s3.open_input_stream(path)

    def open_input_file(self, path):
        return self.s3.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.s3.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.s3.open_append_stream(path, metadata=metadata)


def s3_filesystem(storage: Storage) -> pafs.FileSystem:
    if skip_instance_metadata(storage):
        # Before the first S3FileSystem (the SDK reads it once) and before Ray starts (its workers inherit it).
        os.environ[METADATA_ENV] = "true"
    kwargs: dict[str, Any] = {
        "connect_timeout": 5,
        "request_timeout": 20,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        # A file smaller than one part (5 MiB) goes up in a single PUT at close, instead of
        # create-multipart, upload-part, complete (3 requests); a write error then surfaces at close.
        "allow_delayed_open": True,
    }
    if storage.endpoint:
        parsed = urlparse(storage.endpoint)
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme
    if storage.region:
        kwargs["region"] = storage.region
    elif storage.endpoint:
        kwargs["region"] = "us-east-1"  # S3-compatible stores ignore it; pyarrow would probe AWS for it
    return pafs.PyFileSystem(S3WithoutDirectoryMarkers(pafs.S3FileSystem(**kwargs)))


def resolve_storage(storage: Storage, override: str | None = None) -> ResolvedStorage:
    """The spec's storage (or an override URI/path) as something Ray can write to."""
    uri = override or storage.uri or DEFAULT_LOCAL_ROOT
    if uri.startswith("s3://"):
        export_credentials()
        effective = storage.model_copy(update={"uri": uri})
        parsed = urlparse(uri)
        root = f"{parsed.netloc}{parsed.path}".rstrip("/")
        return ResolvedStorage(root=root, filesystem=s3_filesystem(effective), uri=uri.rstrip("/"), endpoint=storage.endpoint)
    local = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser().resolve()
    return ResolvedStorage(root=str(local), filesystem=None, uri=str(local))


def check_storage(resolved: ResolvedStorage) -> None:
    """Fail fast, before any trial starts, when the storage cannot be written."""
    if not resolved.is_s3:
        try:
            Path(resolved.root).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage.uri: cannot create local directory {resolved.root}: {exc.strerror}") from None
        return
    bucket = resolved.root.split("/", 1)[0]
    where = resolved.endpoint or "AWS S3"
    try:
        info = resolved.fs().get_file_info(bucket)
    except OSError as exc:
        reason = str(exc).splitlines()[0][:300]
        raise StorageError(f"storage.endpoint: cannot reach S3 at {where} for bucket {bucket!r}: {reason}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"storage.uri: bucket {bucket!r} does not exist at {where}")
    try:
        resolved.write_json(".kubetune-write-check", {"ok": True})
    except OSError as exc:
        reason = str(exc).splitlines()[0][:300]
        raise StorageError(f"storage.uri: cannot write to {resolved.uri} at {where}: {reason}") from None
