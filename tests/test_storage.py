"""The attestation store (portal/storage.py): the file store and the S3 store, the
latter against moto's S3 server on loopback."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import tracemalloc
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from portal import storage
from portal.storage import (
    FileStore,
    S3Store,
    StorageError,
    StoredFile,
    StoredFileMissing,
    store_for,
    store_from_url,
    stored_until_committed,
)
from tests import attestation_samples as samples
from tests.attestation_samples import MIB
from tests.conftest import free_port

KEY = re.compile(r"\A2026-11/[A-Za-z0-9_-]{32}\Z")


class FailingStream(io.RawIOBase):
    """Gives `good` bytes, then fails as a dropped connection does."""

    def __init__(self, good: int, error: BaseException | None = None) -> None:
        self.left = good
        self.error = error or OSError("connection reset by peer")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            raise self.error
        size = min(len(buffer), self.left)
        buffer[:size] = b"\x01" * size
        self.left -= size
        return size


class OneWayStream(io.RawIOBase):
    """A body that can be read once and not rewound (a socket, a pipe)."""

    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# -- S3 on loopback ---------------------------------------------------------------------


@pytest.fixture
def s3_store(moto_endpoint, aws_env, clock) -> S3Store:
    bucket = f"attestations-{uuid.uuid4().hex[:12]}"
    store = store_from_url(f"s3://{bucket}/enrs/prod", s3_endpoint_url=moto_endpoint, clock=clock)
    assert isinstance(store, S3Store)
    store.client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    return store


def bucket_keys(store: S3Store) -> list[str]:
    listing = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
def file_store(tmp_path, clock) -> FileStore:
    return FileStore(tmp_path / "attestations", clock=clock)


@pytest.fixture(params=["file", "s3"])
def any_store(request):
    return request.getfixturevalue(f"{request.param}_store")


# -- both stores ------------------------------------------------------------------------


def test_a_stored_file_comes_back_with_its_size_and_sha256(any_store):
    data = os.urandom(300_000)
    stored = any_store.put(io.BytesIO(data))
    assert stored == StoredFile(key=stored.key, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert KEY.match(stored.key)  # random, under the month of the app's clock
    assert any_store.exists(stored.key)
    with any_store.open(stored.key) as handle:
        assert handle.read() == data
    assert b"".join(any_store.iter_chunks(stored.key, chunk_size=64 * 1024)) == data


def test_each_put_gets_a_new_random_key(any_store):
    keys = {any_store.put(io.BytesIO(b"%PDF-1.7 same content")).key for _ in range(3)}
    assert len(keys) == 3


def test_put_reads_from_the_current_position(any_store):
    stream = io.BytesIO(b"skipped|kept")
    stream.seek(8)
    stored = any_store.put(stream)
    assert (stored.size, b"".join(any_store.iter_chunks(stored.key))) == (4, b"kept")


def test_deleting_is_idempotent(any_store):
    stored = any_store.put(io.BytesIO(b"data"))
    any_store.delete(stored.key)
    assert not any_store.exists(stored.key)
    any_store.delete(stored.key)


def test_a_missing_key_raises_when_opened_not_half_way_through_a_response(any_store):
    stored = any_store.put(io.BytesIO(b"data"))
    any_store.delete(stored.key)
    with pytest.raises(StoredFileMissing):
        any_store.open(stored.key)
    with pytest.raises(StoredFileMissing):
        any_store.iter_chunks(stored.key)  # raises on the call, before the first chunk


@pytest.mark.parametrize("key", ["../../etc/passwd", "2026-11/../../secret", "/etc/passwd", "", "2026-11/short",
                                 "2026-11/" + "A" * 31 + "/"])
def test_a_malformed_key_is_never_used(any_store, key):
    for operation in (any_store.open, any_store.exists, any_store.delete):
        with pytest.raises(ValueError):
            operation(key)


def test_a_non_rewindable_stream_is_stored(any_store):
    data = os.urandom(200_000)
    stored = any_store.put(OneWayStream(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(any_store.iter_chunks(stored.key)) == data


def test_a_put_never_overwrites_an_existing_key(any_store, monkeypatch):
    first = any_store.put(io.BytesIO(b"first"))
    token = first.key.split("/")[1]
    drawn = iter([token, token, "B" * 32])
    monkeypatch.setattr(storage.secrets, "token_urlsafe", lambda _n: next(drawn))
    second = any_store.put(io.BytesIO(b"second"))
    assert second.key == "2026-11/" + "B" * 32
    assert b"".join(any_store.iter_chunks(first.key)) == b"first"


def test_when_every_key_drawn_is_taken_the_put_fails_and_keeps_the_existing_file(any_store, monkeypatch):
    first = any_store.put(io.BytesIO(b"first"))
    token = first.key.split("/")[1]
    monkeypatch.setattr(storage.secrets, "token_urlsafe", lambda _n: token)
    with pytest.raises(StorageError):
        any_store.put(io.BytesIO(b"second"))
    assert b"".join(any_store.iter_chunks(first.key)) == b"first"


# -- file store -------------------------------------------------------------------------


def test_files_and_folders_are_private_to_the_portal(file_store):
    stored = file_store.put(io.BytesIO(b"data"))
    path = file_store.path_of(stored.key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert files_under(file_store.root) == [path]  # no temporary file left beside it


@pytest.mark.parametrize("error", [OSError("connection reset"), KeyboardInterrupt(), ValueError("bad chunk")],
                         ids=["os-error", "interrupted", "other-error"])
def test_a_failing_upload_leaves_no_file_behind(file_store, error):
    with pytest.raises((StorageError, type(error))):
        file_store.put(FailingStream(good=300_000, error=error))
    assert files_under(file_store.root) == []


def test_a_read_error_is_reported_as_a_storage_error(file_store):
    with pytest.raises(StorageError):
        file_store.put(FailingStream(good=10))


def test_a_failing_rename_leaves_no_file_behind(file_store, monkeypatch):
    def broken_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(StorageError, match="No space left"):
        file_store.put(io.BytesIO(b"data" * 1000))
    assert files_under(file_store.root) == []


class ReadOnlyFolder:
    """The store's folder turned read-only under a put (a remount, a wrong chmod): the
    rename and every unlink under it refused, as for the service user. Tests run as
    root, whom chmod would not stop, hence the stand-ins."""

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root = root
        self.on = False
        real_replace, real_unlink = os.replace, Path.unlink

        def replace(source, target):
            self.refuse(Path(target))
            return real_replace(source, target)

        def unlink(path, missing_ok=False):
            self.refuse(path)
            return real_unlink(path, missing_ok=missing_ok)

        monkeypatch.setattr(storage.os, "replace", replace)
        monkeypatch.setattr(Path, "unlink", unlink)

    def refuse(self, path: Path) -> None:
        if self.on and self.root in path.parents:
            raise PermissionError(13, "Permission denied", str(path))


@pytest.fixture
def read_only(file_store, monkeypatch):
    return ReadOnlyFolder(file_store.root, monkeypatch)


def put_while_read_only(file_store, read_only) -> list[Path]:
    file_store.put(io.BytesIO(b"first"))  # the month folder exists before the fault
    stored_before = files_under(file_store.root)
    read_only.on = True
    with pytest.raises(StorageError, match="Permission denied"):
        file_store.put(io.BytesIO(b"data" * 1000))
    left = [p for p in files_under(file_store.root) if p not in stored_before]
    assert sorted(p.name.startswith(".upload-") for p in left) == [False, True], left  # nothing could go
    return stored_before


def test_what_a_read_only_folder_kept_goes_at_the_next_put_once_writable(file_store, read_only):
    stored_before = put_while_read_only(file_store, read_only)
    read_only.on = False
    kept = file_store.put(io.BytesIO(b"after"))
    assert files_under(file_store.root) == sorted([*stored_before, file_store.path_of(kept.key)])


def test_what_a_read_only_folder_kept_goes_at_the_end_of_any_request(app, file_store, read_only, monkeypatch):
    monkeypatch.setitem(app.extensions, "enrs.storage", file_store)
    stored_before = put_while_read_only(file_store, read_only)
    app.test_client().get("/")
    assert len(files_under(file_store.root)) == 3, "still read-only: nothing can go yet"
    read_only.on = False
    app.test_client().get("/")
    assert len(files_under(file_store.root)) == 3, "tried less than a second ago: not again on every request"
    file_store._leftovers_tried_at -= storage.LEFTOVER_RETRY_SECONDS
    app.test_client().get("/")
    assert files_under(file_store.root) == stored_before


def test_a_failure_while_removing_leftovers_never_fails_the_request(app, file_store, read_only, monkeypatch):
    monkeypatch.setitem(app.extensions, "enrs.storage", file_store)
    put_while_read_only(file_store, read_only)
    file_store._leftovers_tried_at = float("-inf")
    monkeypatch.setattr(Path, "unlink", lambda *a, **k: 1 / 0)
    assert app.test_client().get("/healthz").status_code == 200


def test_what_a_read_only_folder_kept_goes_when_readyz_checks_the_store(app, file_store, read_only, monkeypatch):
    monkeypatch.setitem(app.extensions, "enrs.storage", file_store)
    stored_before = put_while_read_only(file_store, read_only)
    read_only.on = False
    # Tried a moment ago, so the end of the request waits its second; the probe does not.
    file_store._leftovers_tried_at = storage.time.monotonic() + 60
    ready = app.test_client().get("/readyz")
    assert next(c for c in ready.get_json()["checks"] if c["name"] == "storage")["ok"], ready.get_json()
    assert files_under(file_store.root) == stored_before


def test_a_folder_that_cannot_be_created_is_a_storage_error(tmp_path, clock):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StorageError):
        FileStore(blocker / "attestations", clock=clock).put(io.BytesIO(b"data"))


def test_storing_a_12_mib_upload_keeps_memory_far_below_its_size(tmp_path, file_store):
    """From the multipart body to the stored file, through the checks: never the whole
    file in memory (Python allocations, traced)."""
    from onboarding.attestation import check_upload

    uploads = {
        "scan.pdf": samples.pdf_of_size(12 * MIB),
        "scan.png": samples.png_of_size(12 * MIB),
        "photo.jpg": samples.jpeg_image(3400, 2600, noise=True),
    }
    for name, data in uploads.items():
        (tmp_path / name).write_bytes(data)
    del data, uploads
    # Imports and first-use caches (pypdf, Pillow) are not what is measured.
    for name in ("scan.pdf", "scan.png", "photo.jpg"):
        check_upload(samples.form_files((name, samples.simple_pdf() if name.endswith("pdf") else
                                         samples.png_image() if name.endswith("png") else samples.jpeg_image())),
                     clamd_socket=None)

    for name in ("scan.pdf", "scan.png", "photo.jpg"):
        path = tmp_path / name
        tracemalloc.start()
        try:
            files = samples.form_files((name, path))
            checked = check_upload(files, clamd_socket=None)
            stored = file_store.put(checked.stream)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert stored.size == path.stat().st_size > 8 * MIB
        assert peak < 2 * MIB, f"{name}: peak {peak / MIB:.1f} MiB"
        assert file_store.path_of(stored.key).read_bytes() == path.read_bytes()


# -- S3 store ---------------------------------------------------------------------------


def test_s3_objects_live_under_the_prefix(s3_store):
    stored = s3_store.put(io.BytesIO(b"data"))
    assert bucket_keys(s3_store) == [f"enrs/prod/{stored.key}"]


class BreaksWhenReread(io.BytesIO):
    """Reads once to the end (the store measures and hashes), then fails while the body
    is being sent."""

    finished = False

    def read(self, size=-1):
        data = super().read(size)
        if self.finished and self.tell() > 1000:
            raise OSError("I/O error")
        if not data:
            self.finished = True
        return data


@pytest.mark.parametrize("stream", [lambda: FailingStream(good=300_000), lambda: BreaksWhenReread(os.urandom(50_000))],
                         ids=["while-measuring", "while-sending"])
def test_a_failing_s3_upload_leaves_nothing_in_the_bucket(s3_store, stream):
    with pytest.raises(StorageError):
        s3_store.put(stream())
    assert bucket_keys(s3_store) == []


def test_an_s3_upload_refused_by_the_server_leaves_nothing(s3_store):
    s3_store.bucket = "no-such-bucket-" + uuid.uuid4().hex[:8]
    with pytest.raises(StorageError, match="NoSuchBucket"):
        s3_store.put(io.BytesIO(b"data"))


def test_an_unreachable_s3_endpoint_is_a_storage_error(aws_env, clock):
    store = store_from_url("s3://attestations", s3_endpoint_url=f"http://127.0.0.1:{free_port()}", clock=clock)
    with pytest.raises(StorageError):
        store.put(io.BytesIO(b"data"))
    with pytest.raises(StorageError):
        store.exists("2026-11/" + "A" * 32)


def test_the_s3_client_has_bounded_timeouts_and_retries(aws_env):
    client = storage.s3_client("http://127.0.0.1:9")
    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (storage.S3_CONNECT_TIMEOUT, storage.S3_READ_TIMEOUT)
    assert config.retries["total_max_attempts"] == storage.S3_MAX_ATTEMPTS
    assert config.s3["addressing_style"] == "path"


# -- choosing the store -----------------------------------------------------------------


def test_the_app_store_is_the_configured_folder_built_once(app, app_env, clock):
    store = store_for(app)
    assert store is store_for(app)
    assert isinstance(store, FileStore)
    assert store.root == Path(app_env["ENRS_STORAGE_URL"].removeprefix("file://")).resolve()
    assert store.clock is clock
    with app.app_context():
        assert store_for() is store


def test_a_store_folder_inside_the_served_static_folder_is_refused(app_env, clock):
    from portal.app import ROOT, create_app

    app = create_app({**app_env, "ENRS_STORAGE_URL": f"file://{ROOT / 'static' / 'attestations'}"}, clock=clock)
    try:
        with pytest.raises(StorageError, match="served"):
            store_for(app)
    finally:
        app.extensions["enrs.db"]["engine"].dispose()
    assert not (ROOT / "static" / "attestations").exists()


def test_an_s3_url_gives_an_s3_store_with_the_configured_endpoint(aws_env):
    from portal.config import load_settings

    settings = load_settings({"ENRS_ENV": "development", "ENRS_STORAGE_URL": "s3://bucket-name/some/prefix/",
                              "ENRS_SECRET_KEY": "k" * 40, "ENRS_S3_ENDPOINT_URL": "http://127.0.0.1:9000"})
    store = store_for(settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("bucket-name", "some/prefix/")
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(("url", "root"), [("file:///srv/enrs/attestations", "/srv/enrs/attestations"),
                                           ("file://localhost/srv/a%20b", "/srv/a b")])
def test_file_urls(url, root):
    assert store_from_url(url).root == Path(root)


@pytest.mark.parametrize("url", ["s3://", "ftp://host/x", "file://"])
def test_unusable_storage_urls_are_refused(url):
    with pytest.raises(StorageError):
        store_from_url(url)


# -- store, then commit -----------------------------------------------------------------


@pytest.fixture
def table():
    engine = sa.create_engine("sqlite://")
    metadata = sa.MetaData()
    rows = sa.Table("requests", metadata, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("key", sa.String, unique=True, nullable=False))
    metadata.create_all(engine)
    yield engine, rows
    engine.dispose()


def test_a_committed_row_keeps_its_file(any_store, table):
    engine, rows = table
    with stored_until_committed(any_store, io.BytesIO(b"attestation")) as stored:
        with engine.begin() as connection:
            connection.execute(rows.insert().values(id=1, key=stored.key))
    assert any_store.exists(stored.key)


def test_a_failed_commit_removes_the_stored_file(any_store, table):
    engine, rows = table
    with engine.begin() as connection:
        connection.execute(rows.insert().values(id=1, key="taken"))
    with pytest.raises(sa.exc.IntegrityError):
        with stored_until_committed(any_store, io.BytesIO(b"attestation")) as stored:
            with engine.begin() as connection:
                connection.execute(rows.insert().values(id=1, key=stored.key))  # same id: refused
    assert not any_store.exists(stored.key)
    with engine.connect() as connection:
        assert connection.execute(sa.select(rows.c.key)).scalars().all() == ["taken"]


def test_a_failed_store_runs_no_commit(file_store):
    ran = []
    with pytest.raises(StorageError):
        with stored_until_committed(file_store, FailingStream(good=10)):
            ran.append("commit")
    assert ran == []
    assert files_under(file_store.root) == []


def test_a_file_that_cannot_be_removed_after_a_failed_commit_is_logged(file_store, monkeypatch, caplog):
    def broken_delete(key):
        raise StorageError("disk gone")

    monkeypatch.setattr(file_store, "delete", broken_delete)
    with caplog.at_level(logging.ERROR, logger="enrs.storage"):
        with pytest.raises(RuntimeError, match="commit failed"):
            with stored_until_committed(file_store, io.BytesIO(b"data")) as stored:
                raise RuntimeError("commit failed")
    assert stored.key in caplog.text
