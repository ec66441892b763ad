"""OCI image layout archives (``oci-archive:``, as skopeo and podman read them), streamed both ways.

An archive is a tar of an OCI image layout (image-spec image-layout.md)::

    oci-layout              {"imageLayoutVersion":"1.0.0"}
    index.json              one entry per name (org.opencontainers.image.ref.name)
    blobs/sha256/<hex>      manifests, configs and layers

Writing streams each blob from its file into the tar (``tarfile`` in stream mode): memory stays flat whatever
the model's size. Reading streams each blob member into a temp file in the store while hashing it
(``store.ingest``: staged, not yet committed); a member whose bytes do not match its name is refused, as are
names that could escape a folder (absolute, ``..``, NUL), links, devices and oversized JSON documents.
Nothing here decides what the blobs mean: the caller checks the tree, then commits what was staged.

Adapter: file I/O. Imports the core, ``base.fsutil`` and the store's ``layout`` and ``ingest``; never the
registry, the runtime or the verbs.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from modelpkg.base import fsutil
from modelpkg.core.digest import Digest, sha256
from modelpkg.core.errors import IntegrityError, InvalidInputError, StoreError
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.store import ingest
from modelpkg.store.layout import Store

LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_LAYOUT_BYTES = 64 * 1024
MAX_MEMBERS = 100_000
CHUNK = 1024 * 1024
_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")


def _info(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0  # the same models give the same archive bytes
    info.uname = info.gname = ""
    return info


class _Hashing:
    """Reads a blob file for tarfile, reporting progress and hashing what was read."""

    def __init__(self, f: BinaryIO, progress: Progress, task: str):
        self.f, self.progress, self.task = f, progress, task
        self.hasher = sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if 0 < n <= CHUNK else CHUNK)
        self.hasher.update(data)
        self.progress.advance(self.task, len(data))
        return data


def write_archive(out: BinaryIO, index_json: bytes, blobs: list[tuple[Digest, int, Path]],
                  progress: Progress | None = None) -> int:
    """Write the layout as a tar stream to ``out``: oci-layout, index.json, then each blob from its file.

    Each blob is hashed as it is read and must match its digest (the store's copy is verified on the way
    out). Returns the number of blob bytes written."""
    progress = progress or NullProgress()
    total = 0
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info("oci-layout", len(LAYOUT)), _Bytes(LAYOUT))
            tar.addfile(_info("index.json", len(index_json)), _Bytes(index_json))
            tar.addfile(_info("blobs", 0, directory=True))
            tar.addfile(_info("blobs/sha256", 0, directory=True))
            for digest, size, path in blobs:
                task = digest.short
                progress.start(task, size, f"saving {digest.short}")
                with _open_blob(path, digest) as f:
                    reader = _Hashing(f, progress, task)
                    tar.addfile(_info(f"blobs/sha256/{digest.hex}", size), reader)
                if Digest(reader.hasher.hexdigest()) != digest:
                    raise IntegrityError(f"blob {digest} in the store is corrupted; the archive is not usable",
                                         "run 'modelpkg verify', then pull the model again")
                progress.finish(task)
                total += size
    except OSError as e:
        raise fsutil.os_error(e, getattr(out, "name", "the archive"), "writing") from e
    return total


def _open_blob(path: Path, digest: Digest) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError as e:
        raise StoreError(f"blob {digest} is missing from the store", "run 'modelpkg verify'") from e


class _Bytes:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk = self.data[self.pos:end]
        self.pos += len(chunk)
        return chunk


# ---------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class ArchiveContents:
    """What a read archive held: the layout documents, and every blob (staged in a temp file, or already
    present and only verified)."""

    index_json: bytes | None = None
    oci_layout: bytes | None = None
    staged: dict[Digest, ingest.Staged] = field(default_factory=dict)  # verified, not yet committed
    present: dict[Digest, int] = field(default_factory=dict)

    def discard(self) -> None:
        for staged in self.staged.values():
            staged.discard()
        self.staged.clear()

    def size_of(self, digest: Digest) -> int | None:
        if digest in self.staged:
            return self.staged[digest].size
        return self.present.get(digest)


def _bad(text: str) -> InvalidInputError:
    return InvalidInputError(f"refusing the archive: {text}", "it is not an OCI image layout archive made by a "
                                                               "trusted tool ('modelpkg save', skopeo, podman)")


def member_path(name: str) -> str:
    """A member name, checked: relative, no ``..``, no NUL or backslash; ``./`` prefixes dropped."""
    if "\x00" in name or "\\" in name:
        raise _bad(f"member name {name[:80]!r} has a NUL or backslash")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise _bad(f"member name {name[:80]!r} is absolute")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _bad(f"member name {name[:80]!r} leaves the archive's folder")
    return "/".join(parts)


def read_archive(inp: BinaryIO, store: Store, *, progress: Progress | None = None) -> ArchiveContents:
    """Stream a layout archive (plain or compressed tar) from ``inp``.

    Each ``blobs/sha256/<hex>`` member is hashed while it is read and must match its name: staged into a temp
    file in ``store`` (``ingest.stage``, prefix ``load``), or only hashed when the store has that blob already.
    On any error every temp file is removed and the error raised."""
    progress = progress or NullProgress()
    contents = ArchiveContents()
    try:
        with _open_tar(inp) as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise _bad(f"more than {MAX_MEMBERS} members")
                _read_member(tar, member, contents, store, progress)
    except tarfile.TarError as e:
        contents.discard()
        raise InvalidInputError(f"the archive is damaged or truncated: {e}",
                                "write it again with 'modelpkg save'") from e
    except EOFError as e:
        contents.discard()
        raise InvalidInputError("the archive is truncated", "write it again with 'modelpkg save'") from e
    except BaseException:
        contents.discard()
        raise
    return contents


def _open_tar(inp: BinaryIO) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=inp, mode="r|*")
    except tarfile.TarError as e:
        raise InvalidInputError(f"not a tar archive: {e}", "pass a file written by 'modelpkg save'") from e


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, contents: ArchiveContents, store: Store,
                 progress: Progress) -> None:
    name = member_path(member.name)
    if member.isdir():
        return
    if not member.isfile():
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise _bad(f"member {name[:80]!r} is a {kind}")
    if name == "index.json":
        contents.index_json = _small(tar, member, MAX_INDEX_BYTES)
        return
    if name == "oci-layout":
        contents.oci_layout = _small(tar, member, MAX_LAYOUT_BYTES)
        return
    match = _BLOB.fullmatch(name)
    if not match:
        if name.startswith("blobs/"):
            raise _bad(f"unsupported blob name {name[:100]!r} (only sha256 is read)")
        return  # another file in the layout's folder: not part of the images
    digest = Digest(match.group(1))
    if digest in contents.staged or digest in contents.present:
        return
    source = tar.extractfile(member)
    task = digest.short
    progress.start(task, member.size, f"loading {digest.short}")
    if store.has_blob(digest, member.size):
        hasher, size = sha256(), 0
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            progress.advance(task, len(chunk))
        actual = Digest(hasher.hexdigest())
        if actual != digest:
            raise _corrupted(digest, actual)
        contents.present[digest] = size
    else:
        staged = ingest.stage(store, source, prefix="load", progress=progress, task=task)
        contents.staged[digest] = staged  # from here on, removed with the others on any error
        staged.expect(digest, error=lambda s: _corrupted(digest, s.digest))
        size = staged.size
    if size != member.size:
        raise _bad(f"member {name} is truncated")
    progress.finish(task)


def _corrupted(digest: Digest, actual: Digest) -> IntegrityError:
    return IntegrityError(f"blob {digest} in the archive is corrupted (its content has digest {actual})",
                          "the archive was damaged; copy it again")


def _small(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise _bad(f"{member.name} is {member.size} bytes (the limit is {limit})")
    data = tar.extractfile(member).read(limit + 1)
    if len(data) != member.size:
        raise _bad(f"{member.name} is truncated")
    return data
