"""Run directories in object storage: `--storage s3://bucket/prefix` (or `gs://bucket/prefix`).

Ray Tune writes the trials (results, checkpoints) and its own state straight to the URI, through
the pyarrow filesystem it resolves from it. What hpsearch itself reads and writes as files (the
Optuna study in SQLite, experiment.yaml, the Parquet tables, the report) lives in a *working
copy* of the run folder on the driver, at a path derived from the URI (`working_copy`), and is
uploaded whenever it is written: the study at every snapshot of Tune's state (so the study on
storage is never older than the searcher state Tune restores), the tables at every export.
Before an export, `resume`, `kfold`, `report` or `final`, what the driver reads is downloaded into
the working copy; checkpoints never are (Tune restores them itself).

Credentials are never part of a URI (it is written to experiment.yaml and to Tune's state):
pyarrow reads them from the environment as boto3 does (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_PROFILE and ~/.aws, the instance role; for gs:// GOOGLE_APPLICATION_CREDENTIALS or the VM's
service account), the endpoint of an S3-compatible server from AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow
import pyarrow.fs

from hpsearch.rundir import (
    ERROR_FILE,
    EXPERIMENT_FILE,
    FINAL_DIR,
    PARAMS_FILE,
    PREDICTIONS_NPZ,
    REPORT_DIR,
    RESULT_FILE,
    TRIAL_PREFIX,
    TUNE_STATE_GLOB,
    atomic_write,
    write_json,
)
from hpsearch.search.errors import ExperimentError

SCHEMES = {"s3": "S3", "gs": "Google Cloud Storage"}
ROOT_ENV = "HPSEARCH_RUNS_CACHE"  # where working copies go (default ~/.cache/hpsearch-runs)
# In a working copy: each file that was downloaded or uploaded, as [size, stored mtime, local
# mtime]; a file is fetched again when either side changed since.
MANIFEST = ".remote-manifest.json"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# what the export (and k-fold's predictions table) reads of a trial
_TRIAL_FILES = {RESULT_FILE, PARAMS_FILE, ERROR_FILE, PREDICTIONS_NPZ}


def is_uri(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


@dataclass(frozen=True)
class StorageURI:
    """`scheme://bucket/prefix`, checked: no credentials, query or fragment."""

    scheme: str
    bucket: str
    prefix: str = ""  # '/'-separated, without leading or trailing '/'

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    @property
    def path(self) -> str:
        """The path on the filesystem pyarrow resolves (what Tune calls storage_fs_path)."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def name(self) -> str:
        return self.prefix.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StorageURI:
        return StorageURI(self.scheme, self.bucket, self.prefix.rpartition("/")[0])

    def child(self, *parts: str) -> StorageURI:
        return StorageURI(self.scheme, self.bucket, "/".join(p for p in (self.prefix, *parts) if p))


def _scrubbed(text: str) -> str:
    """`text` without userinfo, query and fragment: safe to print."""
    parts = urlsplit(text)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def parse_uri(text: str, what: str = "storage") -> StorageURI:
    """The checked URI of a storage location; ExperimentError saying what to change. Messages
    never repeat credentials or query parameters."""
    text = str(text).strip()
    parts = urlsplit(text)
    shown = _scrubbed(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ExperimentError(
            f"{what}: {shown!r} has the scheme {parts.scheme + '://'!r}; use s3://BUCKET/PREFIX "
            "or gs://BUCKET/PREFIX, or a path that every node mounts (NFS), e.g. /mnt/shared/runs"
        )
    if "@" in parts.netloc:
        raise ExperimentError(
            f"{what}: {shown!r} holds credentials before '@'; they would be written to "
            f"{EXPERIMENT_FILE} and Ray Tune's state. Remove them and give them through the "
            "environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the "
            "instance role); for gs://, GOOGLE_APPLICATION_CREDENTIALS"
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ExperimentError(
            f"{what}: {shown!r} has query parameters ('?...'), which would be written to "
            f"{EXPERIMENT_FILE} and Ray Tune's state (and may hold secrets). Remove them; set "
            "the endpoint with AWS_ENDPOINT_URL, the region with AWS_DEFAULT_REGION and the "
            "credentials with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment"
        )
    bucket = parts.netloc
    if not bucket:
        raise ExperimentError(f"{what}: {shown!r} names no bucket; use {scheme}://BUCKET/PREFIX")
    if not _BUCKET.fullmatch(bucket):
        raise ExperimentError(
            f"{what}: {bucket!r} in {shown!r} is not a bucket name (3-222 lowercase letters, "
            "digits, '.', '_' and '-', starting and ending with a letter or digit); a port or "
            "endpoint belongs in AWS_ENDPOINT_URL"
        )
    segments = [s for s in parts.path.split("/") if s]
    for s in segments:
        if s in (".", "..") or s.startswith(".") or any(ord(c) < 32 for c in s):
            raise ExperimentError(
                f"{what}: {shown!r}: the path segment {s!r} is not allowed (no '.', '..', "
                "leading dots or control characters)"
            )
    return StorageURI(scheme, bucket, "/".join(segments))


def working_copy_root() -> Path:
    """$HPSEARCH_RUNS_CACHE, else $XDG_CACHE_HOME/hpsearch-runs, else ~/.cache/hpsearch-runs."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base).expanduser() / "hpsearch-runs").resolve()


def working_copy(uri: StorageURI) -> Path:
    """The driver's working copy of a run folder: <root>/<scheme>/<bucket>/<prefix>. Always the
    same path for the same URI and user, which matters: Tune's pickled searcher names its study's
    SQLite file by absolute path, so a resumed search must find optuna.db where it was."""
    return working_copy_root().joinpath(uri.scheme, uri.bucket, *uri.prefix.split("/"))


def uri_of_working_copy(path: str | os.PathLike[str]) -> StorageURI | None:
    """The URI whose working copy `path` is, or None for any other path."""
    try:
        rel = Path(path).expanduser().resolve().relative_to(working_copy_root())
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) < 3 or parts[0] not in SCHEMES:
        return None
    return StorageURI(parts[0], parts[1], "/".join(parts[2:]))


def location_uri(location: str | os.PathLike[str]) -> StorageURI | None:
    """The storage URI of a run given as a URI or as its working copy; None for a local run."""
    if is_uri(location):
        return parse_uri(str(location), "run")
    return uri_of_working_copy(location)


def local_path(location: str | os.PathLike[str]) -> Path:
    """Where the driver reads a run: its working copy for a URI, else the path itself."""
    uri = location_uri(location)
    return working_copy(uri) if uri else Path(location)


def display(location: str | os.PathLike[str]) -> str:
    """How to name a run to the user: the URI of a working copy, else the path."""
    uri = location_uri(location)
    return str(uri) if uri else str(location)


def _endpoint(uri: StorageURI) -> str:
    if uri.scheme == "s3":
        custom = _custom_endpoint()
        if custom:
            return _scrubbed(custom) if "://" in custom else custom
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return f"AWS S3 (region {region or 'of the bucket'})"
    return "Google Cloud Storage (storage.googleapis.com)"


def _short(error: BaseException) -> str:
    """The first line of a pyarrow error, cut short: its full text can run to pages."""
    line = next((ln for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    return line if len(line) <= 300 else line[:300] + "..."


def _check_endpoint_listens(uri: StorageURI) -> None:
    """A custom endpoint that refuses connections fails here at once, not after pyarrow's retries."""
    if uri.scheme != "s3":
        return
    custom = _custom_endpoint()
    if not custom:
        return
    parts = urlsplit(custom if "://" in custom else f"http://{custom}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ExperimentError(
            f"AWS_ENDPOINT_URL {_endpoint(uri)!r} has no valid port, e.g. http://127.0.0.1:9000"
        ) from None
    try:
        socket.create_connection((parts.hostname or "", port), timeout=5).close()
    except OSError as e:
        raise ExperimentError(
            f"{uri}: cannot reach the S3 endpoint {_endpoint(uri)} ({e.strerror or e}): start "
            "the server, or correct AWS_ENDPOINT_URL (unset it for AWS itself)"
        ) from None


def _custom_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str, endpoint: str):

    uri = StorageURI(scheme, bucket)
    _check_endpoint_listens(uri)
    try:
        fs, _ = pyarrow.fs.FileSystem.from_uri(str(uri))
        info = fs.get_file_info(bucket)
    except (OSError, pyarrow.ArrowException) as e:
        raise _storage_error(uri, e) from None
    if info.type == pyarrow.fs.FileType.NotFound:
        create = (
            f"aws s3 mb s3://{bucket}"
            if scheme == "s3"
            else f"gcloud storage buckets create gs://{bucket}"
        )
        raise ExperimentError(
            f"{uri}: the bucket {bucket!r} does not exist at {_endpoint(uri)}: create it "
            f"({create}) or correct the name"
        )
    return fs


def _storage_error(uri: StorageURI, error: BaseException) -> ExperimentError:
    text = _short(error)
    denied = ("ACCESS_DENIED", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoes")
    if any(k in text for k in (*denied, "credentials")):
        how = (
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role"
            if uri.scheme == "s3"
            else "GOOGLE_APPLICATION_CREDENTIALS or the VM's service account"
        )
        return ExperimentError(
            f"{uri}: {_endpoint(uri)} refused access ({text}); give credentials that may list, "
            f"read, write and delete in the bucket through {how}"
        )
    return ExperimentError(
        f"{uri}: cannot reach {_endpoint(uri)} ({text}); check the network, AWS_ENDPOINT_URL "
        "and AWS_DEFAULT_REGION (or, for gs://, the Google credentials)"
    )


def filesystem(uri: StorageURI):
    """The pyarrow filesystem of `uri`'s bucket, resolved as Ray Tune resolves it
    (`pyarrow.fs.FileSystem.from_uri`: endpoint, region and credentials from the environment),
    after checking that the bucket answers. Its pickle holds no credentials (only those of a
    URI would be, and URIs with credentials are refused), so Tune may ship it to every node."""
    return _filesystem(uri.scheme, uri.bucket, _custom_endpoint() if uri.scheme == "s3" else "")


def tune_storage(storage: Path | str) -> dict[str, Any]:
    """RunConfig's storage_path (and storage_filesystem) for a local folder or a URI."""
    if not is_uri(storage):
        return {"storage_path": str(Path(storage).resolve())}
    uri = parse_uri(str(storage))
    return {"storage_path": uri.path, "storage_filesystem": filesystem(uri)}


def tune_restore(location: Path | str) -> dict[str, Any]:
    """Tuner.restore's path (and storage_filesystem) for a local experiment folder or a URI."""
    if not is_uri(location):
        return {"path": str(Path(location).resolve())}
    uri = parse_uri(str(location))
    return {"path": uri.path, "storage_filesystem": filesystem(uri)}


def read_bytes(uri: str) -> bytes:
    """One object's content (e.g. a fold's start weights, read by a trial on any node)."""
    parsed = parse_uri(uri)
    try:
        with filesystem(parsed).open_input_stream(parsed.path) as f:
            return f.readall()
    except OSError as e:
        raise _storage_error(parsed, e) from None


def _local_stamp(path: Path) -> int:
    return path.stat().st_mtime_ns


def _wanted(parts: tuple[str, ...], *, results_only: bool) -> bool:
    """Whether the driver downloads this file of a run folder: never checkpoints, the report or
    final models; of a trial folder only what the export reads."""
    if any(p.startswith((".", "checkpoint_")) for p in parts):
        return False
    in_trial = len(parts) >= 2 and parts[-2].startswith(TRIAL_PREFIX)
    if results_only:  # of this experiment folder itself, not of one nested in it (kfold/)
        if len(parts) == 1:
            return Path(parts[0]).match(TUNE_STATE_GLOB)
        return len(parts) == 2 and in_trial and parts[-1] in _TRIAL_FILES
    if parts[0] == REPORT_DIR or (parts[0] == FINAL_DIR and parts[-1].startswith("model-")):
        return False
    return parts[-1] in _TRIAL_FILES if in_trial else True


@dataclass(frozen=True)
class RemoteRun:
    """A run folder in object storage and its working copy on this machine."""

    uri: StorageURI
    local: Path
    fs: Any = field(compare=False, repr=False)

    @classmethod
    def open(cls, uri: StorageURI) -> RemoteRun:
        """Resolve `uri`'s filesystem and check that its bucket answers (ExperimentError)."""
        return cls(uri, working_copy(uri), filesystem(uri))

    def _fs_path(self, rel: str = "") -> str:
        return f"{self.uri.path}/{rel}" if rel else self.uri.path

    def exists(self) -> bool:
        """Whether anything is stored under the run's URI."""

        try:
            return self.fs.get_file_info(self._fs_path()).type != pyarrow.fs.FileType.NotFound
        except OSError as e:
            raise _storage_error(self.uri, e) from None

    def _manifest(self) -> dict[str, list[int]]:
        try:
            return json.loads((self.local / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}

    def _save_manifest(self, manifest: dict[str, list[int]]) -> None:
        self.local.mkdir(parents=True, exist_ok=True)
        write_json(self.local / MANIFEST, manifest, indent=None)

    def download(self, under: str = "", *, results_only: bool = False) -> int:
        """Bring the working copy up to date with what the driver reads under `under` (the run
        folder, or e.g. 'kfold'): new and changed files are downloaded, files downloaded before
        that are gone from storage are removed. `results_only`: Tune's experiment state and the
        trials' results (what the export reads). Returns how many files were downloaded."""

        base = self._fs_path(under)
        selector = pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = [i for i in self.fs.get_file_info(selector) if i.is_file]
        except OSError as e:
            raise _storage_error(self.uri, e) from None
        remote = {}
        for info in infos:
            rel_under = info.path[len(base) :].lstrip("/")
            if rel_under and _wanted(tuple(rel_under.split("/")), results_only=results_only):
                rel = f"{under}/{rel_under}" if under else rel_under
                remote[rel] = [int(info.size or 0), int(info.mtime_ns or 0)]
        manifest = self._manifest()

        def stale(rel: str) -> bool:
            path = self.local / rel
            return not path.is_file() or manifest.get(rel) != [*remote[rel], _local_stamp(path)]

        todo = [rel for rel in remote if stale(rel)]

        def fetch(rel: str) -> None:
            path = self.local / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(self._fs_path(rel)) as src:
                atomic_write(path, src.readall())

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(fetch, todo))
        except OSError as e:
            raise _storage_error(self.uri, e) from None
        prefix = f"{under}/" if under else ""
        for rel in [r for r in manifest if r.startswith(prefix) and r not in remote]:
            if not _wanted(tuple(rel[len(prefix) :].split("/")), results_only=results_only):
                continue  # outside what this download looked at (e.g. an uploaded report)
            (self.local / rel).unlink(missing_ok=True)
            del manifest[rel]
        manifest.update({rel: [*remote[rel], _local_stamp(self.local / rel)] for rel in todo})
        self._save_manifest(manifest)
        return len(todo)

    def upload(self, names: Iterable[str]) -> None:
        """Upload these files or folders of the working copy (paths relative to it); one that
        is missing locally is deleted from storage too. Each object is replaced whole (a
        reader sees the old file or the new one)."""

        manifest = self._manifest()
        files: list[str] = []
        for name in names:
            path = self.local / name
            if path.is_dir():
                files += [
                    p.relative_to(self.local).as_posix()
                    for p in sorted(path.rglob("*"))
                    if p.is_file() and not p.name.startswith(".")
                ]
            elif path.is_file():
                files.append(Path(name).as_posix())
            else:
                try:
                    if self.fs.get_file_info(self._fs_path(name)).is_file:
                        self.fs.delete_file(self._fs_path(name))
                except OSError as e:
                    raise _storage_error(self.uri, e) from None
                manifest.pop(Path(name).as_posix(), None)
        try:
            for rel in files:
                with (
                    open(self.local / rel, "rb") as src,
                    self.fs.open_output_stream(self._fs_path(rel)) as dst,
                ):
                    while chunk := src.read(8 << 20):
                        dst.write(chunk)
            infos = self.fs.get_file_info([self._fs_path(rel) for rel in files]) if files else []
        except OSError as e:
            raise _storage_error(self.uri, e) from None
        for rel, info in zip(files, infos, strict=True):
            if info.type == pyarrow.fs.FileType.File:
                stored = [int(info.size or 0), int(info.mtime_ns or 0)]
                manifest[rel] = [*stored, _local_stamp(self.local / rel)]
        self._save_manifest(manifest)


def open_run(location: str | os.PathLike[str]) -> RemoteRun | None:
    """The remote run a URI (or its working copy) names, checked to answer; None for a local
    path."""
    uri = location_uri(location)
    return RemoteRun.open(uri) if uri else None


def checkout(location: str | os.PathLike[str]) -> tuple[Path, RemoteRun | None]:
    """(the folder to read the run from, its RemoteRun or None). For a URI (or its working
    copy) the working copy is first brought up to date; a URI that holds no run is an
    ExperimentError."""
    run = open_run(location)
    if run is None:
        return Path(location), None
    if not run.exists():
        raise ExperimentError(
            f"{run.uri} holds no run: nothing is stored under it (check the bucket, prefix and "
            "run name, e.g. with `aws s3 ls`)"
        )
    run.download()
    return run.local, run
