"""File-system helpers: atomic writes, one-pass copy-and-hash, reflinks, and OSError translation.

Every write that must survive a crash goes: temp file in the destination's filesystem -> fsync ->
``os.replace`` -> fsync of the folder. A crash leaves the old file or the new one, never a mix.

Adapter: file I/O. Imports ``modelpkg.errors``, ``modelpkg.digest``, ``modelpkg.progress``.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from modelpkg.digest import Digest, sha256
from modelpkg.errors import StoreError
from modelpkg.progress import NullProgress, Progress

CHUNK = 4 * 1024 * 1024
_FICLONE = 0x40049409  # linux/fs.h: clone a whole file (btrfs, xfs, bcachefs; not ext4)


def os_error(e: OSError, path: Path | str, action: str) -> StoreError:
    """Translate an OSError into one clear ``StoreError``."""
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return StoreError(f"disk full while {action} {path}", "free some space (try 'modelpkg gc') and run it again")
    if e.errno == errno.EROFS:
        return StoreError(f"read-only file system: cannot write {path}", "point MODELPKG_HOME at a writable folder")
    if e.errno in (errno.EACCES, errno.EPERM):
        return StoreError(f"permission denied while {action} {path}", "check the folder's owner and permissions")
    return StoreError(f"cannot {action.replace('ing', '')} {path}: {e.strerror or e}")


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry needs its own fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(folder: Path, prefix: str = "tmp") -> Path:
    return folder / f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}"


def atomic_write(path: Path, data: bytes, temp_dir: Path | None = None, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old content or the new."""
    folder = temp_dir or path.parent
    tmp = temp_name(folder, ".write")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        _unlink_quietly(tmp)
        raise os_error(e, path, "writing") from e


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@contextmanager
def removing_on_error(path: Path) -> Iterator[Path]:
    """Yield ``path``; delete it if the block raises, so no half file is left behind."""
    try:
        yield path
    except BaseException:
        _unlink_quietly(path)
        raise


def copy_and_hash(src: BinaryIO, dst: Path, *, progress: Progress | None = None, task: str = "",
                  start_hasher=None, append: bool = False) -> tuple[Digest, int]:
    """Copy ``src`` into the new file ``dst`` (fsynced), hashing the bytes on the way: one read of the source.

    Hashing and writing overlap: hashlib releases the GIL, so a writer thread writes chunk N while the
    caller's thread hashes chunk N+1 (two cores make this close to the cost of hashing alone).
    """
    progress = progress or NullProgress()
    hasher = start_hasher or sha256()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_EXCL)
    try:
        fd = os.open(dst, flags, 0o644)
    except OSError as e:
        raise os_error(e, dst, "creating") from e
    total = 0
    writer = _Writer(fd)
    try:
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            writer.put(chunk)
            hasher.update(chunk)
            total += len(chunk)
            progress.advance(task, len(chunk))
        writer.close()
        os.fsync(fd)
    except OSError as e:
        writer.abandon()
        raise os_error(e, dst, "writing") from e
    except BaseException:
        writer.abandon()
        raise
    finally:
        os.close(fd)
    return Digest(hasher.hexdigest()), total


class _Writer:
    """A one-slot pipeline: writes chunks on a thread while the caller hashes the next one."""

    def __init__(self, fd: int):
        self.fd = fd
        self.error: OSError | None = None
        self._slot: list[bytes] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def put(self, chunk: bytes) -> None:
        with self._cond:
            while self._slot and self.error is None:
                self._cond.wait()
            self._raise()
            self._slot.append(chunk)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._raise()

    def abandon(self) -> None:
        with self._cond:
            self._closed = True
            self._slot.clear()
            self._cond.notify_all()
        self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._slot and not self._closed:
                    self._cond.wait()
                if not self._slot:
                    return
                chunk = self._slot[0]
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as e:
                with self._cond:
                    self.error = e
                    self._slot.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                self._slot.clear()
                self._cond.notify_all()


def try_reflink(src: Path, dst: Path) -> bool:
    """Clone ``src`` to the new file ``dst`` sharing its blocks (copy-on-write). False where unsupported."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(src, "rb") as s:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                fcntl.ioctl(fd, _FICLONE, s.fileno())
                os.fsync(fd)
                return True
            except OSError:
                pass
            finally:
                os.close(fd)
    except OSError:
        pass
    _unlink_quietly(dst)
    return False


def hash_file(path: Path, progress: Progress | None = None, task: str = "") -> tuple[Digest, int]:
    """sha256 and size of a file, read in large chunks."""
    progress = progress or NullProgress()
    hasher = sha256()
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            total += len(chunk)
            progress.advance(task, len(chunk))
    return Digest(hasher.hexdigest()), total
