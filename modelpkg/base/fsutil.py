"""File-system helpers: atomic writes, one-pass copy-and-hash, reflinks, removable lock files, opening only regular
files (``open_regular``), and OSError translation.

Every write that must survive a crash goes: temp file in the destination's filesystem -> fsync ->
``os.replace`` -> fsync of the folder. A crash leaves the old file or the new one, never a mix.

Adapter: file I/O. Imports ``modelpkg.core.errors``, ``modelpkg.core.digest``, ``modelpkg.core.progress``.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from modelpkg.core.digest import Digest, sha256
from modelpkg.core.errors import IntegrityError, InvalidInputError, NotFoundError, StoreError
from modelpkg.core.progress import NullProgress, Progress

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
    return StoreError(f"failed while {action} {path}: {e.strerror or e}")


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular(path: Path | str, mode: int) -> InvalidInputError | None:
    """The error for a file of ``mode`` that is not a regular file (reading a FIFO or a device blocks or never
    ends), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return InvalidInputError(f"{path} is {kind}, not a regular file",
                             "only regular files are read (a FIFO or a device could block or never end)")


def require_regular(path: Path | str) -> None:
    """Refuse, before anything opens it, a ``path`` that is missing (``NotFoundError``) or not a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as e:
        raise NotFoundError(f"file not found: {path}") from e
    except OSError as e:
        raise os_error(e, path, "reading") from e
    refused = not_regular(path, mode)
    if refused is not None:
        raise refused


def open_regular(path: Path | str) -> int:
    """Open ``path`` for reading, only if it is a regular file; return the descriptor.

    Asked before the open (``stat``: a device is never opened, since opening some has effects) and again of
    what was opened (``fstat``: a FIFO swapped in between is caught). ``O_NONBLOCK`` keeps that open from
    waiting for a FIFO's writer; it changes nothing for a regular file, and is cleared. ``FileNotFoundError``
    passes through (the caller names the file the user gave); a non-regular file is ``InvalidInputError``.
    """
    refused = not_regular(path, os.stat(path).st_mode)
    if refused is not None:
        raise refused
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                 | getattr(os, "O_CLOEXEC", 0))
    try:
        refused = not_regular(path, os.fstat(fd).st_mode)
        if refused is not None:
            raise refused
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    """A unique name that records the owner's pid (``<prefix>-<pid>-<random>``), so a working file can be
    told from debris: see ``owner_pid`` and the store's owner locks."""
    return folder / f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}"


_OWNED = re.compile(r"-(\d{1,10})-[0-9a-f]+(\.[a-z][a-z.]*)?$")


def owner_pid(name: str) -> int | None:
    """The pid recorded in the working file name ``name`` (see ``temp_name``); None for other names
    (``<hex>.partial``, ``<hex>.lock``, a folder)."""
    match = _OWNED.search(name)
    return int(match[1]) if match else None


def pid_exists(pid: int) -> bool:
    """Is there a process ``pid`` in this pid namespace? (A reused pid says yes: callers only keep files on it.)"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists but belongs to someone else
    except (OSError, OverflowError):
        return False  # beyond pid_max: no such process
    return True


# ------------------------------------------------------------------------------------------------------------
# Lock files that can be removed. flock(2) dies with its process in any pid namespace (it belongs to the open
# file, not to a pid), so a lock file tells a live owner from a dead one where a pid cannot. A lock file is
# removed only by a process that holds its lock, and an acquirer checks, once locked, that the name still
# leads to the inode it locked (else it was removed meanwhile: it opens the name again). So removing a lock
# file never lets two processes hold "the same" lock.

UNLOCKABLE = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # a filesystem without flock


def _flock(fd: int, *, blocking: bool) -> bool:
    """Take the exclusive flock of ``fd``: False when not ``blocking`` and another holds it; OSError where
    there is no flock (``UNLOCKABLE``)."""
    try:
        import fcntl
    except ImportError as e:
        raise OSError(errno.ENOSYS, "no flock on this system") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def lock_file(path: Path, *, blocking: bool = True) -> int | None:
    """Hold the exclusive flock of ``path`` (created if missing) and return its fd; None when ``blocking`` is
    False and another process holds it. OSError where it cannot be locked (``UNLOCKABLE``: no flock here)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock(fd, blocking=blocking)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return None
        if _still_named(fd, path):
            return fd
        os.close(fd)  # removed (or replaced) while we waited: lock the file the name leads to now


def unlock_and_remove(fd: int, path: Path) -> None:
    """Remove the lock file ``path`` whose lock ``fd`` holds, then release it (a waiter finds the name gone)."""
    try:
        if _still_named(fd, path):
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """Does a process hold the flock of ``path``? False when it is missing. Creates nothing; where flock
    is unavailable the answer is True (nothing can be known, so nothing is taken for dead)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        return not _flock(fd, blocking=False)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this probe took


def remove_if_unlocked(path: Path) -> bool:
    """Remove the lock file ``path`` unless a process holds its lock; True when it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        locked = _flock(fd, blocking=False)
    except OSError:
        locked = False  # no flock here: nothing can be known, keep it
    if not locked:
        os.close(fd)
        return False
    gone = _still_named(fd, path)
    unlock_and_remove(fd, path)
    return gone


def _still_named(fd: int, path: Path) -> bool:
    try:
        named, opened = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


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
        unlink_quietly(tmp)
        raise os_error(e, path, "writing") from e


def unlink_quietly(path: Path) -> None:
    """Delete a file if possible; cleanup that must never mask the error being handled."""
    try:
        os.unlink(path)
    except OSError:
        pass


def remove(path: Path) -> None:
    """Delete a file; a missing file is fine, any other failure is one ``StoreError``."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise os_error(e, path, "deleting") from e


@contextmanager
def removing_on_error(path: Path) -> Iterator[Path]:
    """Yield ``path``; delete it if the block raises, so no half file is left behind."""
    try:
        yield path
    except BaseException:
        unlink_quietly(path)
        raise


def copy_and_hash(src: BinaryIO, dst: Path, *, progress: Progress | None = None, task: str = "") -> tuple[Digest, int]:
    """Copy the stream ``src`` into the new file ``dst`` (fsynced), hashing the bytes on the way.

    Hashing and writing overlap: hashlib releases the GIL, so a writer thread writes chunk N while this
    thread hashes chunk N+1.
    """
    progress = progress or NullProgress()
    try:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        raise os_error(e, dst, "creating") from e
    try:
        return _stream_into(src, fd, progress, task)
    except OSError as e:
        raise os_error(e, dst, "writing") from e
    finally:
        os.close(fd)


SPAN = 64 * 1024 * 1024


def copy_file_and_hash(src: Path, dst: Path, *, progress: Progress | None = None, task: str = "") -> tuple[Digest, int]:
    """Copy the file ``src`` to the new file ``dst`` (fsynced) and return the digest of what was written.

    The kernel copies (``copy_file_range``: no round trip through Python, several times faster than
    write() here) and flushes one 64 MiB span ahead on a thread, while this thread hashes the previous
    span read back from ``dst`` (fresh in the page cache). Hashing the destination, not the source, means the
    digest always names the stored bytes, even if someone writes to the source meanwhile. Where the
    kernel cannot copy between these files, falls back to the read-hash-write pipeline.
    """
    progress = progress or NullProgress()
    try:
        fi = open_regular(src)
    except FileNotFoundError:
        raise  # the caller says which file the user named
    except OSError as e:
        raise os_error(e, src, "reading") from e
    try:
        fo = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        os.close(fi)
        raise os_error(e, dst, "creating") from e
    try:
        result = _kernel_copy_and_hash(fi, fo, progress, task)
        if result is None:
            os.ftruncate(fo, 0)
            os.lseek(fo, 0, os.SEEK_SET)
            with open(fi, "rb", closefd=False) as f:
                os.lseek(fi, 0, os.SEEK_SET)
                return _stream_into(f, fo, progress, task)
        os.ftruncate(fo, result[1])  # the source may have shrunk while it was copied
        os.fsync(fo)
        return result
    except OSError as e:
        raise os_error(e, dst, "writing") from e
    finally:
        os.close(fi)
        os.close(fo)


def _kernel_copy_and_hash(fi: int, fo: int, progress: Progress, task: str) -> tuple[Digest, int] | None:
    from concurrent.futures import ThreadPoolExecutor

    def copy_span(offset: int) -> int:
        done = 0
        while done < SPAN:
            n = os.copy_file_range(fi, fo, SPAN - done, offset + done, offset + done)
            if n == 0:
                break
            done += n
        os.fdatasync(fo)  # flush each span while the next is hashed, so the final fsync has little left
        return done

    hasher = sha256()
    view = memoryview(bytearray(CHUNK))
    try:
        length = copy_span(0)  # the first span on this thread: an error here means "not supported"
    except OSError:
        return None  # EXDEV, ENOSYS, EINVAL...: this pair of files cannot be copied by the kernel
    start = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        while length:
            following = pool.submit(copy_span, start + length) if length == SPAN else None
            offset, end = start, start + length
            while offset < end:
                n = os.preadv(fo, [view[: min(CHUNK, end - offset)]], offset)
                if n == 0:
                    raise OSError(errno.EIO, "the copy is shorter than what was copied")
                hasher.update(view[:n])
                offset += n
                progress.advance(task, n)
            start = end
            length = following.result() if following else 0
    return Digest(hasher.hexdigest()), start


def _stream_into(src: BinaryIO, fd: int, progress: Progress, task: str) -> tuple[Digest, int]:
    hasher = sha256()
    total = 0
    writer = _Writer(fd)
    try:
        while chunk := src.read(CHUNK):
            writer.put(chunk)
            hasher.update(chunk)
            total += len(chunk)
            progress.advance(task, len(chunk))
        writer.close()
        os.fsync(fd)
    except BaseException:
        writer.abandon()
        raise
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
        with open(open_regular(src), "rb") as s:
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
    unlink_quietly(dst)
    return False


def hash_file(path: Path, progress: Progress | None = None, task: str = "") -> tuple[Digest, int]:
    """sha256 and size of a file, read in large chunks."""
    progress = progress or NullProgress()
    hasher = sha256()
    total = 0
    with open(open_regular(path), "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            total += len(chunk)
            progress.advance(task, len(chunk))
    return Digest(hasher.hexdigest()), total


def place_file(src: Path, dst: Path, *, allow_link: bool, expected: Digest | None = None,
               progress: Progress | None = None, task: str = "", mode: int = 0o644) -> tuple[Digest, int, str]:
    """Create ``dst`` with ``src``'s content without copying data where the filesystem allows, and return
    ``(digest, size, how)`` of what was placed.

    ``how`` is ``reflink`` (blocks shared copy-on-write: independent files), else ``link`` (a hard link,
    when ``allow_link``: the same inode, so an in-place edit of the source changes ``dst`` too), else
    ``copy``. The placed bytes are hashed; when ``expected`` is given and differs, ``IntegrityError`` is
    raised. On any failure ``dst`` is removed.
    """
    progress = progress or NullProgress()
    require_regular(src)
    with removing_on_error(dst):
        how = "reflink" if try_reflink(src, dst) else ""
        if not how and allow_link:
            try:
                os.link(src, dst)
                how = "link"
            except FileNotFoundError as e:
                raise NotFoundError(f"file not found: {src}") from e
            except OSError:
                pass  # another filesystem, or protected_hardlinks: copy instead
        try:
            if how:
                digest, size = hash_file(dst, progress, task)
            else:
                how = "copy"
                digest, size = copy_file_and_hash(src, dst, progress=progress, task=task)
                os.chmod(dst, mode)
        except FileNotFoundError as e:
            raise NotFoundError(f"file not found: {src}") from e
        except OSError as e:
            raise os_error(e, src, "reading") from e
        if expected is not None and digest != expected:
            raise IntegrityError(f"{src} does not match its digest: expected {expected}, got {digest}",
                                 "the file is damaged; fetch it again with the tool that made it")
    return digest, size, how
