"""Ollama's models folder: read its manifests and blobs, and write models into it in Ollama's own layout.

Layout (reference/ollama-behaviour.md section 2.5; Ollama's ``manifest/paths.go``)::

    $OLLAMA_MODELS (default ~/.ollama/models)
      manifests/<host>/<namespace>/<model>/<tag>    the manifest JSON (dirs 0755, files 0644)
      blobs/sha256-<64 hex>                          every blob, named by its digest

Ollama never edits a blob in place: it writes a temp file and renames it, and deletes blobs no manifest uses.
That is why sharing a blob's inode with modelpkg's store (a hard link) is safe in practice; a reflink, where
the filesystem has one, shares only the blocks and is always safe.

Adapter: file I/O. Imports the pure core and ``fsutil``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from modelpkg.base import config, fsutil
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import IntegrityError, InvalidInputError, InvalidReferenceError, NotFoundError
from modelpkg.core.manifest import MAX_MANIFEST_BYTES, Descriptor, Index, Manifest, parse_manifest
from modelpkg.core.progress import Progress

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# types/model/name.go isValidPart: first character [A-Za-z0-9_], then the part's own set and length.
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG = _MODEL

_OLLAMA_TYPES = frozenset({mt.OLLAMA_MODEL, mt.OLLAMA_ADAPTER, mt.OLLAMA_PROJECTOR, mt.OLLAMA_TEMPLATE,
                           mt.OLLAMA_PROMPT, mt.OLLAMA_SYSTEM, mt.OLLAMA_PARAMS, mt.OLLAMA_MESSAGES, mt.OLLAMA_LICENSE,
                           "application/vnd.ollama.image.draft"})


# ---------------------------------------------------------------------------------------------------------
# Names (pure)


@dataclass(frozen=True)
class OllamaName:
    """``host/namespace/model:tag``, as Ollama spells a model (types/model/name.go)."""

    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def short(self) -> str:
        """Ollama's DisplayShortest: default host and namespace dropped, the tag always shown."""
        text = f"{self.model}:{self.tag}"
        if self.host.lower() != DEFAULT_HOST or self.namespace.lower() != DEFAULT_NAMESPACE:
            text = f"{self.namespace}/{text}"
        if self.host.lower() != DEFAULT_HOST:
            text = f"{self.host}/{text}"
        return text

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Ollama matches names case-insensitively."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)


def parse_ollama_name(text: str) -> OllamaName:
    """Ollama's ParseName: ``[scheme://][host/][namespace/]model[:tag]`` with its defaults and part rules."""
    original = text
    text = text.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    tag = DEFAULT_TAG
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
    pieces = text.split("/")
    if len(pieces) > 3:
        pieces = ["/".join(pieces[:-2]), *pieces[-2:]]  # the host may not contain '/': rejected below
    model = pieces[-1]
    namespace = pieces[-2] if len(pieces) >= 2 else DEFAULT_NAMESPACE
    host = pieces[-3] if len(pieces) == 3 else DEFAULT_HOST
    name = OllamaName(host, namespace, model, tag)
    check_ollama_name(name, original)
    return name


def check_ollama_name(name: OllamaName, original: str | None = None) -> None:
    for part, rule, what in ((name.host, _HOST, "host"), (name.namespace, _NAMESPACE, "namespace"),
                             (name.model, _MODEL, "model"), (name.tag, _TAG, "tag")):
        if not rule.fullmatch(part):
            raise InvalidReferenceError(
                f"invalid Ollama model name {original or str(name)!r}: bad {what} {part[:80]!r}",
                "Ollama names are [host/][namespace/]model[:tag]; parts start with a letter, digit or _")


# ---------------------------------------------------------------------------------------------------------
# Which manifests Ollama reads as they are (pure); building Ollama's form is ``modelpkg.core.formats``' job


def is_ollama_manifest(manifest: Manifest) -> bool:
    """A manifest Ollama reads as it is: Docker v2, a ConfigV2 config, only ``vnd.ollama.image.*`` layers."""
    return (manifest.media_type == mt.DOCKER_MANIFEST and manifest.config.media_type == mt.DOCKER_CONFIG
            and all(layer.media_type in _OLLAMA_TYPES for layer in manifest.layers))


# ---------------------------------------------------------------------------------------------------------
# The folder (I/O)


def default_models_dir() -> Path:
    """``$OLLAMA_MODELS``, else ``~/.ollama/models`` (Ollama's envconfig.Models)."""
    return config.ollama_models() or Path.home() / ".ollama" / "models"


class OllamaStore:
    """One Ollama models folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir = self.root / "blobs"

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / f"sha256-{digest.hex}"

    def manifest_path(self, name: OllamaName) -> Path:
        return self.manifests_dir.joinpath(*name.parts)

    def names(self) -> list[OllamaName]:
        """Every model in the folder (Ollama enumerates ``manifests/*/*/*/*``); invalid names are skipped."""
        if not self.manifests_dir.is_dir():
            raise NotFoundError(f"no Ollama models folder at {self.root}",
                                "pass --models DIR or set OLLAMA_MODELS to the folder Ollama uses")
        found = []
        for path in sorted(self.manifests_dir.glob("*/*/*/*")):
            if not path.is_file() or path.is_symlink():
                continue
            name = OllamaName(*path.relative_to(self.manifests_dir).parts)
            try:
                check_ollama_name(name)
            except InvalidReferenceError:
                continue
            found.append(name)
        return found

    def find(self, name: OllamaName) -> OllamaName:
        """The name as it is spelled on disk (matching is case-insensitive, as Ollama's is)."""
        for existing in self.names():
            if existing.key == name.key:
                return existing
        raise NotFoundError(f"model not found in {self.root}: {name.short()}", "see 'ollama list'")

    def read_manifest(self, name: OllamaName) -> Manifest:
        path = self.manifest_path(name)
        try:
            with open(fsutil.open_regular(path), "rb") as f:  # a FIFO in its place would block the read
                data = f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError as e:
            raise NotFoundError(f"model not found in {self.root}: {name.short()}", "see 'ollama list'") from e
        except OSError as e:
            raise fsutil.os_error(e, path, "reading") from e
        try:
            parsed = parse_manifest(data)
        except InvalidInputError as e:
            raise InvalidInputError(f"the Ollama manifest of {name.short()} ({path}) is invalid: {e.message}") from e
        if isinstance(parsed, Index):
            raise InvalidInputError(f"the Ollama manifest of {name.short()} is an index, not a model")
        return parsed

    def check_blob(self, desc: Descriptor, name: OllamaName) -> None:
        """The blob must be there with the size the manifest declares (its content is verified when read)."""
        path = self.blob_path(desc.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError as e:
            raise NotFoundError(f"{name.short()} is incomplete: blob {desc.digest} is missing from {self.blobs_dir}",
                                f"run 'ollama pull {name.short()}' (or create it again), then import it") from e
        except OSError as e:
            raise fsutil.os_error(e, path, "reading") from e
        if size != desc.size:
            raise IntegrityError(f"{name.short()}: blob {path} has {size} bytes, its manifest says {desc.size}",
                                 f"run 'ollama pull {name.short()}' again, then import it")

    # writing -------------------------------------------------------------------------------------------

    def put_blob(self, digest: Digest, src: Path, *, allow_link: bool = True,
                 progress: Progress | None = None, task: str = "") -> str:
        """Place ``src`` as the blob ``digest``: reflink, else hard link, else copy; verified before it is named.

        Returns how: ``present`` (a blob of that name and size is there already, as Ollama itself trusts),
        ``reflink``, ``link`` or ``copy``."""
        target = self.blob_path(digest)
        try:
            if target.stat().st_size == src.stat().st_size:
                return "present"
        except OSError:
            pass
        self._mkdirs(self.blobs_dir)
        tmp = self.blobs_dir / f".modelpkg-{os.getpid()}-{digest.hex[:12]}-{os.urandom(4).hex()}"
        _, _, how = fsutil.place_file(src, tmp, allow_link=allow_link, expected=digest, progress=progress, task=task)
        try:
            os.replace(tmp, target)
            fsutil.fsync_dir(self.blobs_dir)
        except OSError as e:
            raise fsutil.os_error(e, target, "writing") from e
        finally:
            fsutil.unlink_quietly(tmp)  # rename(2) leaves both names when they are links to one file already
        return how

    def put_bytes(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        target = self.blob_path(digest)
        if not (target.exists() and target.stat().st_size == len(data)):
            self._mkdirs(self.blobs_dir)
            fsutil.atomic_write(target, data, mode=0o644)
        return digest

    def write_manifest(self, name: OllamaName, data: bytes) -> Path:
        """Written last, atomically: Ollama sees the model whole or not at all."""
        check_ollama_name(name)
        path = self.manifest_path(name)
        self._mkdirs(path.parent)
        fsutil.atomic_write(path, data, mode=0o644)
        return path

    def _mkdirs(self, folder: Path) -> None:
        try:
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as e:
            raise fsutil.os_error(e, folder, "creating") from e

