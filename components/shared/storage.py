"""One storage layer for local paths and ``gs://`` URIs.

Every step reads and writes through these functions, so a step runs the same on a laptop (local paths)
and on a cluster (GCS). GCS goes through ``google-cloud-storage``; when ``STORAGE_EMULATOR_HOST`` is set
(tests run fake-gcs-server) the client talks to the emulator with anonymous credentials.

Local writes are atomic (temp file + rename) so a crash never leaves a half-written artifact; uploads
are verified against the server's CRC32C before they count as done.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import glob
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GCS_PREFIX = "gs://"


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI."""


def is_gcs(uri: str) -> bool:
    """True for ``gs://bucket/key`` URIs."""
    return str(uri).startswith(GCS_PREFIX)


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_gcs(uri):
        raise StorageError(f"{uri!r} is not a gs:// URI")
    rest = uri[len(GCS_PREFIX) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join path segments onto a local path or a gs:// URI."""
    if is_gcs(base):
        out = base.rstrip("/")
        for p in parts:
            out = out + "/" + str(p).strip("/")
        return out
    return str(Path(base, *parts))


@functools.lru_cache(maxsize=4)
def _client_for(emulator: str | None, project: str | None) -> Any:
    from google.cloud import storage

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "test", credentials=AnonymousCredentials())
    return storage.Client(project=project)


def gcs_client() -> Any:
    """A cached ``google.cloud.storage.Client`` (the emulator's when ``STORAGE_EMULATOR_HOST`` is set)."""
    return _client_for(os.environ.get("STORAGE_EMULATOR_HOST"), os.environ.get("GOOGLE_CLOUD_PROJECT"))


@contextlib.contextmanager
def _gcs_errors(uri: str) -> Iterator[None]:
    """Turn the client's NotFound / Forbidden into a ``StorageError`` that names the URI."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        kind = type(err).__name__
        if kind == "NotFound":
            raise StorageError(f"{uri}: no such bucket or object ({err})") from None
        if kind in ("Forbidden", "Unauthorized"):
            raise StorageError(
                f"{uri}: access denied ({err}); check the credentials' bucket permissions"
            ) from None
        raise


def _blob(uri: str) -> Any:
    bucket, key = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(key)


# ---------------------------------------------------------------- reading


def read_bytes(uri: str) -> bytes:
    """Read a whole file."""
    if is_gcs(uri):
        with _gcs_errors(uri):  # NotFound, Forbidden, Unauthorized name the URI
            return _blob(uri).download_as_bytes()
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise StorageError(f"{uri}: no such file") from None


def read_text(uri: str) -> str:
    """Read a whole UTF-8 text file."""
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    """Read a JSON file."""
    return json.loads(read_text(uri))


def exists(uri: str) -> bool:
    """True if the file (or, locally, the directory) exists."""
    if is_gcs(uri):
        return bool(_blob(uri).exists())
    return Path(uri).exists()


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching object names the way local ``glob(recursive=True)`` matches paths.

    ``*`` and ``?`` stay within one path segment, ``**/`` spans zero or more directories; ``fnmatch`` would
    let ``*`` cross ``/`` and make ``dir/*.jsonl`` match files in sub-directories on GCS only.
    """
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def list_files(pattern: str) -> list[str]:
    """Files under a directory/prefix, or matching a glob (``*``, ``**``), sorted.

    ``dir`` or ``gs://b/dir`` lists every file below it; ``dir/*.jsonl`` filters by the glob.
    """
    has_glob = any(ch in pattern for ch in "*?[")
    if is_gcs(pattern):
        bucket, key = split_gcs(pattern)
        if has_glob:
            prefix = key[: min(key.index(ch) for ch in "*?[" if ch in key)]
            prefix = prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""
        else:
            prefix = key.rstrip("/") + "/" if key else ""
        matcher = _glob_regex(key)
        out = []
        with _gcs_errors(pattern):
            for blob in gcs_client().list_blobs(bucket, prefix=prefix):
                if blob.name.endswith("/"):
                    continue
                if has_glob and not matcher.fullmatch(blob.name):
                    continue
                out.append(f"{GCS_PREFIX}{bucket}/{blob.name}")
        if not out and not has_glob and _blob(pattern).exists():
            return [pattern]
        return sorted(out)
    if has_glob:
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    path = Path(pattern)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.is_file())
    return []


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[io.BufferedIOBase]:
    """A binary file object for reading (streamed from GCS)."""
    if is_gcs(uri):
        with _blob(uri).open("rb") as f:
            yield f
    else:
        with open(uri, "rb") as f:
            yield f


# ---------------------------------------------------------------- writing


def write_bytes(uri: str, data: bytes, *, if_generation_match: int | None = None) -> None:
    """Write a whole file: atomically on local disk; with an optional generation precondition on GCS."""
    if is_gcs(uri):
        blob = _blob(uri)
        kwargs = {} if if_generation_match is None else {"if_generation_match": if_generation_match}
        blob.upload_from_string(data, **kwargs)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    """Write a UTF-8 text file."""
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    """Write an indented JSON file (keys kept in insertion order)."""
    write_text(uri, json.dumps(obj, indent=2, default=str) + "\n")


def delete(uri: str) -> None:
    """Delete a file or (locally) a directory tree; missing is not an error."""
    if is_gcs(uri):
        bucket, key = split_gcs(uri)
        for blob in gcs_client().list_blobs(bucket, prefix=key):
            if blob.name == key or blob.name.startswith(key.rstrip("/") + "/"):
                blob.delete()
        return
    p = Path(uri)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


# ---------------------------------------------------------------- directories


def crc32c_b64(path: str | Path) -> str:
    """Base64 CRC32C of a local file, the form GCS reports in ``blob.crc32c``."""
    import google_crc32c

    h = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_manifest(local_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": bytes, "crc32c": base64}}`` of every file under a local directory.

    Taken *before* an upload, it is what the upload must reproduce: a file that changes or disappears
    while it is being copied fails verification instead of being published half-written.
    """
    local_dir = Path(local_dir)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        out[path.relative_to(local_dir).as_posix()] = {
            "size": path.stat().st_size,
            "crc32c": crc32c_b64(path),
        }
    return out


def upload_file(
    local: str | Path,
    uri: str,
    *,
    chunk_size: int | None = None,
    expected_crc32c: str | None = None,
    expected_size: int | None = None,
) -> None:
    """Upload one file to GCS and verify the server's CRC32C (and size) against the local file.

    Files above ``chunk_size`` (default: the client's 8 MiB multipart limit) go up as resumable uploads:
    each chunk continues from the byte offset the server has confirmed, and a chunk that hits a transient
    network error is retried on its own instead of restarting the file. ``expected_crc32c``/``expected_size`` (from
    ``file_manifest``) pin what must arrive; the CRC is also sent to GCS, which refuses a mismatching
    object itself. A mismatch raises ``StorageError``, so callers never treat a corrupt upload as done.
    """
    from google.cloud.storage.retry import DEFAULT_RETRY

    blob = _blob(uri)
    if chunk_size:
        # The resumable protocol needs multiples of 256 KiB.
        blob.chunk_size = max(256 * 1024, (chunk_size // (256 * 1024)) * 256 * 1024)
    local_crc = expected_crc32c or crc32c_b64(local)
    try:
        blob.upload_from_filename(
            str(local), checksum="crc32c", retry=DEFAULT_RETRY, crc32c_checksum_value=local_crc
        )
        blob.reload()
    except FileNotFoundError:
        raise StorageError(f"{uri}: local file {local} disappeared before it was uploaded") from None
    except Exception as err:
        raise StorageError(f"{uri}: upload of {local} failed: {type(err).__name__}: {err}") from err
    if blob.crc32c != local_crc:
        raise StorageError(
            f"{uri}: CRC32C mismatch after upload (server {blob.crc32c}, expected {local_crc}); "
            f"{local} changed while it was being uploaded, or the upload was corrupted"
        )
    if expected_size is not None and blob.size != expected_size:
        raise StorageError(
            f"{uri}: size mismatch after upload (server {blob.size}, expected {expected_size})"
        )


def upload_dir(
    local_dir: str | Path,
    uri: str,
    *,
    chunk_size: int | None = None,
    manifest: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Copy a local directory to a local path or gs:// prefix; returns the written URIs, each verified.

    Every file is checked against ``manifest`` (default: one taken now, before the first byte moves):
    CRC32C and size on the server for gs://, a re-read of the copy for local destinations. Files that
    are in the manifest but gone, or that changed during the copy, raise ``StorageError`` naming them.
    """
    local_dir = Path(local_dir)
    if manifest is None:
        manifest = file_manifest(local_dir)
    written = []
    for rel, expected in manifest.items():
        path = local_dir / rel
        dest = join(uri, rel)
        if is_gcs(uri):
            upload_file(
                path,
                dest,
                chunk_size=chunk_size,
                expected_crc32c=expected["crc32c"],
                expected_size=expected["size"],
            )
        else:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(path, dest)
            except FileNotFoundError:
                raise StorageError(f"{dest}: local file {path} disappeared before it was copied") from None
            got = crc32c_b64(dest)
            if got != expected["crc32c"] or os.path.getsize(dest) != expected["size"]:
                raise StorageError(
                    f"{dest}: copy does not match {path} as it was when the copy started (CRC32C {got}, "
                    f"expected {expected['crc32c']}); the file changed during the copy"
                )
        written.append(dest)
    return written


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy every file under a gs:// prefix (or local directory) into ``local_dir``."""
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    if not is_gcs(uri):
        shutil.copytree(uri, local_dir, dirs_exist_ok=True)
        return local_dir
    bucket, key = split_gcs(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    n = 0
    with _gcs_errors(uri):
        for blob in gcs_client().list_blobs(bucket, prefix=prefix):
            if blob.name.endswith("/"):
                continue
            dest = local_dir / blob.name[len(prefix) :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(dest))
            n += 1
    if n == 0:
        raise StorageError(f"{uri}: no files under this prefix")
    return local_dir


def cache_root() -> Path:
    """Where remote inputs are cached locally (``DKTO_CACHE_DIR``, default ``~/.cache/dkto``)."""
    root = Path(os.environ.get("DKTO_CACHE_DIR", Path.home() / ".cache" / "dkto"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def local_dir(uri: str) -> Path:
    """A local directory holding the contents of ``uri`` (itself if local; a cached download if gs://)."""
    if not is_gcs(uri):
        return Path(uri)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = cache_root() / "dirs" / key
    marker = dest / ".complete"
    if not marker.exists():
        tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix="dl-"))
        download_dir(uri, tmp)
        (tmp / ".complete").write_text(uri)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------- tables


def write_parquet(table: Any, uri: str) -> None:
    """Write a ``pyarrow.Table`` (or pandas DataFrame) as Parquet to a local path or gs://."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(uri, buf.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None) -> Any:
    """Read a Parquet file from a local path or gs:// into a ``pyarrow.Table``."""
    import pyarrow.parquet as pq

    if is_gcs(uri):
        return pq.read_table(io.BytesIO(read_bytes(uri)), columns=columns)
    return pq.read_table(uri, columns=columns)
