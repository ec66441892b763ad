"""The one ingest path: a stream becomes a blob only whole and checked; a refused one leaves nothing behind."""

from __future__ import annotations

import io

import pytest

from modelpkg.base import fsutil
from modelpkg.core.digest import Digest
from modelpkg.core.errors import IntegrityError, InvalidInputError
from modelpkg.store import Pins, Store, ingest


def _working_files(store: Store) -> list[str]:
    return sorted(p.name for p in store.ingest_dir.iterdir() if p.is_file())


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "home").init()


def test_receive_stores_the_bytes_under_their_digest(store):
    data = b"a blob" * 1000
    with store.session() as pins:
        digest = ingest.receive(store, io.BytesIO(data), pins, expected=Digest.of(data), size=len(data))
        assert digest in Pins.live(store)
    assert digest == Digest.of(data)
    assert store.read_blob(digest) == data
    assert store.is_verified(digest)  # hashed on the way in: the next pull trusts it without re-hashing
    assert _working_files(store) == []


@pytest.mark.parametrize("size", [None, 3])
def test_receive_refuses_other_bytes_and_leaves_nothing(store, size):
    wanted = Digest.of(b"what was promised")
    with store.session() as pins, pytest.raises(IntegrityError):
        ingest.receive(store, io.BytesIO(b"something else"), pins, expected=wanted if size is None else None,
                       size=size)
    assert not store.has_blob(wanted) and not store.has_blob(Digest.of(b"something else"))
    assert _working_files(store) == []


def test_the_callers_error_is_raised_with_what_arrived(store):
    wanted = Digest.of(b"x")
    with store.session() as pins, pytest.raises(InvalidInputError, match=f"got {Digest.of(b'y')}"):
        ingest.receive(store, io.BytesIO(b"y"), pins, expected=wanted,
                       error=lambda staged: InvalidInputError(f"expected {wanted}, got {staged.digest}"))
    assert _working_files(store) == []


def test_a_staged_blob_waits_for_commit_and_goes_when_left(store):
    with ingest.stage(store, io.BytesIO(b"later"), prefix="load") as staged:
        assert staged.path.name.startswith("load-") and staged.path.read_bytes() == b"later"
        assert not store.has_blob(staged.digest)
    assert not staged.path.exists() and not store.has_blob(staged.digest)
    with store.session() as pins, ingest.stage(store, io.BytesIO(b"now"), prefix="load") as staged:
        staged.commit(pins)
    assert store.read_blob(Digest.of(b"now")) == b"now"
    assert _working_files(store) == []


def test_a_download_replaces_a_damaged_blob_under_the_lock(store):
    data = b"the real bytes"
    digest = Digest.of(data)
    store.blob_path(digest).write_bytes(b"short")  # a damaged blob under the right name
    with store.session() as pins, ingest.download_lock(store, digest):
        assert fsutil.lock_held(store.download_lock_path(digest))  # a second downloader waits here
        store.partial_path(digest).write_bytes(data)  # what the registry client leaves, verified
        ingest.commit_download(store, digest, pins)
    assert store.read_blob(digest) == data
    assert not store.partial_path(digest).exists()
    assert not fsutil.lock_held(store.download_lock_path(digest))
    assert _working_files(store) == []  # the lock file went with the lock: a finished download leaves nothing
