"""The attestation store: files kept under random keys, on disk or in an S3 bucket.

`store_for(app)` gives the store of ENRS_STORAGE_URL (`file://DIR` or
`s3://bucket/prefix`), built once per app. Every store streams: `put` copies the upload
in chunks while measuring its size and SHA-256, so a 12 MiB attestation never sits whole
in memory. Keys are random (192 bits) under a month folder, e.g. `2026-11/Xy…`; they
say nothing about the user or the original file name.

The caller stores first, then commits the database row, and removes the file when the
commit fails: `stored_until_committed` does that ordering (see docs/uploads.md).
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Protocol
from urllib.parse import unquote, urlsplit

from flask import Flask, current_app

from portal.clock import system_clock
from portal.config import Settings

log = logging.getLogger("enrs.storage")

CHUNK_SIZE = 64 * 1024
# 24 random bytes: 32 URL-safe characters; collisions are not a practical concern but
# the stores still refuse to overwrite (see FileStore._reserve and S3Store.put).
TOKEN_BYTES = 24
KEY_PATTERN = re.compile(r"\A\d{4}-\d{2}/[A-Za-z0-9_-]{32}\Z")
# Attempts at a fresh key when one is already taken (only a broken random source gets there).
KEY_ATTEMPTS = 3
# How often a process tries again to remove what its failed puts left (FileStore.remove_leftovers).
LEFTOVER_RETRY_SECONDS = 1.0

# Read by this module until portal/config.py knows it (see docs/uploads.md).
S3_CONNECT_TIMEOUT = 5
S3_READ_TIMEOUT = 30
S3_MAX_ATTEMPTS = 3  # the first request included

Clock = Callable[[], datetime]


class StorageError(Exception):
    """The store could not do what was asked (disk full, bucket unreachable, …)."""


class StoredFileMissing(StorageError, LookupError):
    """No file under that key."""


@dataclass(frozen=True)
class StoredFile:
    key: str
    size: int
    sha256: str  # hex


class Store(Protocol):
    def put(self, stream: BinaryIO) -> StoredFile:
        """Copy the stream (from its current position to its end) under a new key.
        If it raises, nothing remains stored."""

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the stored file; the caller closes it.
        Raises StoredFileMissing."""

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The file's bytes in chunks, for a streamed response. The file is opened at
        once, so a missing key raises StoredFileMissing here, not half-way through."""

    def delete(self, key: str) -> None:
        """Remove the file; a missing key is not an error."""

    def exists(self, key: str) -> bool: ...

    def check(self) -> None:
        """Raise when the store cannot take a file right now (readiness probe)."""


def new_key(clock: Clock) -> str:
    return f"{clock():%Y-%m}/{secrets.token_urlsafe(TOKEN_BYTES)}"


def check_key(key: str) -> str:
    """Keys come back from the database; a malformed one (a path, `..`) is a bug or a
    tampered row, never something to hand to the filesystem or the bucket."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


def _read_chunks(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            return
        yield chunk


def _chunks_then_close(stream: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    try:
        yield from _read_chunks(stream, chunk_size)
    finally:
        stream.close()


# -- file:// ----------------------------------------------------------------------------


class FileStore:
    """Files under a local folder, owner-only (0600 files, 0700 folders).

    A put writes a temporary file in the key's own folder, fsyncs it, then renames it
    over a name reserved with O_EXCL and fsyncs the folder: the key either holds the
    whole file or does not exist, even after a power cut, and an existing key is never
    overwritten."""

    def __init__(self, root: Path, *, clock: Clock = system_clock) -> None:
        self.root = Path(root)
        self.clock = clock
        # What failed puts could not remove (see remove_leftovers).
        self._leftovers: set[Path] = set()
        self._leftovers_pass = threading.Lock()
        self._leftovers_tried_at = float("-inf")

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.root} is not writable")
        self.remove_leftovers(now=True)

    def put(self, stream: BinaryIO) -> StoredFile:
        self.remove_leftovers()
        try:
            key, final = self._reserve()
        except OSError as exc:
            raise StorageError(f"cannot create a file under {self.root}: {exc}") from exc
        folder = final.parent
        temp_path: str | None = None
        try:
            fd, temp_path = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in _read_chunks(stream):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp_path, final)
            temp_path = None
            _fsync_dir(folder)
        except BaseException as exc:
            if temp_path is not None:
                self._remove_or_remember(Path(temp_path))
            self._remove_or_remember(final)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {final}: {exc}") from exc
            raise
        return StoredFile(key=key, size=size, sha256=digest.hexdigest())

    # A folder that turns read-only under a put (a remount, a wrong chmod) refuses the
    # rename and the removals alike. The process that wrote the pieces knows they are
    # debris, whatever their age, where the hourly orphan sweep only trusts them after
    # ORPHAN_AGE: so it removes them itself once the folder takes writes again, at its
    # next put, /readyz, or the end of any request (init_app). A process that stops
    # before then leaves them to the sweep.

    def _remove_or_remember(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s (%s); trying again once the folder takes writes", path, exc)
            self._leftovers.add(path)

    def remove_leftovers(self, *, now: bool = False) -> int:
        """Remove what failed puts had to leave behind; the number still there. Free when
        there is nothing. Otherwise at most once a second unless `now`, so that a folder
        still read-only does not cost every request a failed unlink; and by one thread at
        a time, the others going on at once (an unlink can hang on a network mount)."""
        if not self._leftovers:
            return 0
        started = time.monotonic()
        if (not now and started - self._leftovers_tried_at < LEFTOVER_RETRY_SECONDS) \
                or not self._leftovers_pass.acquire(blocking=False):
            return len(self._leftovers)
        try:
            self._leftovers_tried_at = started
            for path in self._leftovers.copy():  # a put of another thread may add to it meanwhile
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    continue
                self._leftovers.discard(path)
                log.info("removed %s, left behind by a failed upload", path)
        finally:
            self._leftovers_pass.release()
        return len(self._leftovers)

    def _reserve(self) -> tuple[str, Path]:
        """A new key and its path, created empty with O_EXCL so that no other put (of
        this process or another) can take the same name."""
        for _ in range(KEY_ATTEMPTS):
            key = new_key(self.clock)
            path = self.root / key
            if not path.parent.is_dir():
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                path.parent.mkdir(mode=0o700, exist_ok=True)
                # The new month folder must survive a crash along with the file in it.
                _fsync_dir(self.root)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                log.error("storage key %s already exists; drawing another", key)
                continue
            os.close(fd)
            return key, path
        raise StorageError("could not draw an unused storage key")

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path_of(key), "rb")
        except FileNotFoundError:
            raise StoredFileMissing(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        return _chunks_then_close(self.open(key), chunk_size)

    def delete(self, key: str) -> None:
        try:
            self.path_of(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def stale_entries(self, older_than: datetime) -> Iterator[tuple[str, bool]]:
        """(key or temporary name, is_temporary) of what was written before `older_than`:
        the candidates of the orphan sweep (a process killed mid-upload leaves them)."""
        limit = older_than.timestamp()
        if not self.root.is_dir():
            return
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in folder.iterdir():
                try:
                    if path.stat().st_mtime >= limit:
                        continue
                except FileNotFoundError:
                    continue
                temporary = path.name.startswith(".upload-")
                yield (str(path) if temporary else f"{folder.name}/{path.name}"), temporary

    def remove_temporary(self, name: str) -> None:
        _unlink_quietly(Path(name))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.exception("could not remove %s", path)


# -- s3:// ------------------------------------------------------------------------------


class _Window(io.RawIOBase):
    """`length` bytes of a seekable file from `start`, seekable within that range, so
    that botocore can send (and on a retry resend) the body without reading it whole."""

    def __init__(self, source: BinaryIO, start: int, length: int) -> None:
        self.source = source
        self.start = start
        self.length = length
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = min(max(base + offset, 0), self.length)
        return self.position

    def read(self, size: int = -1) -> bytes:
        left = self.length - self.position
        if size is None or size < 0 or size > left:
            size = left
        if size == 0:
            return b""
        self.source.seek(self.start + self.position)
        data = self.source.read(size)
        self.position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __len__(self) -> int:
        return self.length


class S3Store:
    """Objects in an S3 bucket (AWS or an S3-compatible store such as MinIO or Ceph).

    A put is a single PUT of at most a few tens of MB, streamed from the (seekable)
    upload, with `If-None-Match: *` (never overwrite) and the SHA-256 checked by the
    store (`x-amz-checksum-sha256`). A single PUT is atomic: no partial object and no
    unfinished multipart upload is ever left behind."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, clock: Clock = system_clock) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.clock = clock

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def object_name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def stale_entries(self, older_than: datetime) -> Iterator[tuple[str, bool]]:
        """Keys of objects written before `older_than` (a single PUT leaves no partial
        object: nothing temporary here)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                if item["LastModified"] < older_than:
                    yield item["Key"][len(self.prefix):], False

    def remove_temporary(self, name: str) -> None:
        pass

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def put(self, stream: BinaryIO) -> StoredFile:
        spool: BinaryIO | None = None
        try:
            try:
                if _seekable(stream):
                    source, start = stream, stream.tell()
                    size, digest = _measure(_read_chunks(stream))
                else:
                    # A body that can only be read once is copied to a local temporary
                    # file first, so that a retried PUT can send it again.
                    spool = tempfile.TemporaryFile()
                    source, start = spool, 0
                    size, digest = _measure(_copy_through(stream, spool))
            except OSError as exc:
                raise StorageError(f"cannot read the upload for s3://{self.bucket}: {exc}") from exc
            return self._put_measured(source, start, size, digest)
        finally:
            if spool is not None:
                spool.close()

    def _put_measured(self, source: BinaryIO, start: int, size: int, digest: Any) -> StoredFile:
        from botocore.exceptions import BotoCoreError, ClientError

        checksum = base64.b64encode(digest.digest()).decode("ascii")
        for _ in range(KEY_ATTEMPTS):
            key = new_key(self.clock)
            name = self.prefix + key
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=name,
                    Body=_Window(source, start, size),
                    ContentLength=size,
                    ContentType="application/octet-stream",
                    ChecksumSHA256=checksum,
                    IfNoneMatch="*",
                )
            except ClientError as exc:
                if _error_code(exc) in ("PreconditionFailed", "412"):
                    log.error("storage key %s already exists in %s; drawing another", key, self.bucket)
                    continue
                self._remove_after_failure(name)
                raise StorageError(f"cannot store in s3://{self.bucket}/{name}: {exc}") from exc
            except BaseException as exc:
                self._remove_after_failure(name)
                if isinstance(exc, (BotoCoreError, OSError)):
                    raise StorageError(f"cannot store in s3://{self.bucket}/{name}: {exc}") from exc
                raise
            return StoredFile(key=key, size=size, sha256=digest.hexdigest())
        raise StorageError("could not draw an unused storage key")

    def _remove_after_failure(self, name: str) -> None:
        # A PUT that timed out on its response may still have been stored.
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except Exception:
            log.exception("could not remove s3://%s/%s after a failed upload", self.bucket, name)

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self.object_name(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise StoredFileMissing(key) from None
            raise StorageError(f"cannot read s3://{self.bucket}/{name}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read s3://{self.bucket}/{name}: {exc}") from exc
        return response["Body"]

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        return _chunks_then_close(self.open(key), chunk_size)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self.object_name(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)  # S3 deletes are idempotent
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot delete s3://{self.bucket}/{name}: {exc}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self.object_name(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise StorageError(f"cannot reach s3://{self.bucket}/{name}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach s3://{self.bucket}/{name}: {exc}") from exc
        return True


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError):
        return False


def _measure(chunks: Iterator[bytes]) -> tuple[int, Any]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest


def _copy_through(stream: BinaryIO, out: BinaryIO) -> Iterator[bytes]:
    for chunk in _read_chunks(stream):
        out.write(chunk)
        yield chunk
    out.flush()


def _error_code(exc: Any) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", ""))


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client with bounded timeouts and retries. Credentials and region come
    from boto3's usual sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION, an instance role…)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=S3_CONNECT_TIMEOUT,
        read_timeout=S3_READ_TIMEOUT,
        retries={"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        # S3-compatible stores are addressed by path: virtual hosts would need wildcard DNS.
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


# -- choosing the store -----------------------------------------------------------------


def store_from_url(url: str, *, s3_endpoint_url: str | None = None, clock: Clock = system_clock) -> Store:
    parts = urlsplit(url)
    if parts.scheme == "file":
        host = "" if parts.netloc in ("", "localhost") else parts.netloc
        path = unquote(host + parts.path)
        if not path:
            raise StorageError(f"{url!r}: a folder path is required")
        return FileStore(Path(path).resolve(), clock=clock)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"{url!r}: a bucket name is required")
        return S3Store(s3_client(s3_endpoint_url), parts.netloc, unquote(parts.path), clock=clock)
    raise StorageError(f"{url!r}: the scheme must be file:// or s3://")


def _s3_endpoint(settings: Settings) -> str | None:
    return settings.s3_endpoint_url


def _refuse_served_folder(store: Store, served: list[Path]) -> None:
    if not isinstance(store, FileStore):
        return
    for folder in served:
        folder = folder.resolve()
        if store.root == folder or folder in store.root.parents:
            raise StorageError(f"the attestation folder {store.root} is inside the served folder {folder}")


def init_app(app: Flask) -> None:
    """A file store's leftovers (FileStore.remove_leftovers) also go at the end of any
    request, not only at the next upload, which may be long in coming to this process."""

    def remove_leftovers(_exc: BaseException | None) -> None:
        store = app.extensions.get("enrs.storage")
        if isinstance(store, FileStore):
            try:
                store.remove_leftovers()
            except Exception:  # never the request's failure: the sweep remains
                log.exception("could not remove the leftovers of failed uploads")

    app.teardown_request(remove_leftovers)


def store_for(app_or_settings: Flask | Settings | None = None) -> Store:
    """The store of the app (built once, kept in app.extensions), or a new one for bare
    Settings (commands and tests). Without an argument: the current app's."""
    target = app_or_settings if app_or_settings is not None else current_app._get_current_object()  # type: ignore[attr-defined]
    if isinstance(target, Settings):
        return store_from_url(target.storage_url, s3_endpoint_url=_s3_endpoint(target))
    store = target.extensions.get("enrs.storage")
    if store is None:
        settings: Settings = target.extensions["enrs.settings"]
        clock = target.extensions.get("enrs.clock", system_clock)
        store = store_from_url(settings.storage_url, s3_endpoint_url=_s3_endpoint(settings), clock=clock)
        served = [Path(target.static_folder)] if target.static_folder else []
        _refuse_served_folder(store, served)
        target.extensions["enrs.storage"] = store
    return store


# -- store, then commit -----------------------------------------------------------------


@contextmanager
def stored_until_committed(store: Store, stream: BinaryIO) -> Iterator[StoredFile]:
    """Store the stream, yield the StoredFile, and delete it again if the block raises.

        with stored_until_committed(store_for(), checked.stream) as stored:
            db.session.add(Request(..., attestation_key=stored.key, ...))
            db.session.commit()          # the last statement of the block

    If `put` fails, the block never runs, so nothing is committed. If the commit fails,
    the file is removed and the exception goes on. The commit must be the last thing in
    the block: an error raised after a successful commit would remove the file of a
    committed row."""
    stored = store.put(stream)
    try:
        yield stored
    except BaseException:
        try:
            store.delete(stored.key)
        except Exception:
            # The row was not committed, so the file is an orphan, not a dangling row;
            # logged with its key so that an operator can remove it.
            log.exception("could not remove the stored file %s after a failed commit", stored.key)
        raise


__all__ = [
    "CHUNK_SIZE", "FileStore", "S3Store", "Store", "StorageError", "StoredFile", "StoredFileMissing",
    "check_key", "s3_client", "store_for", "store_from_url",
    "stored_until_committed",
]
