"""Moving models between modelpkg's store and other tools: Ollama's models folder, OCI archives, plain files.

- ``import_ollama`` / ``export_ollama``: models in and out of an Ollama models folder under the same names,
  sharing the weights' data (reflink, else hard link, else copy) and verifying every blob.
- ``save`` / ``load``: an OCI image layout archive (``oci-archive:``) for air-gapped machines, streamed.
- ``export_files``: a model's files under their file names (model.gguf, template, params.json, ...) for
  llama-server, LM Studio and the like, with titles from the manifest sanitised.

Every operation checks everything before it names anything: a failure leaves the destination's names as
they were (blobs already placed are unreferenced and ``gc`` removes them).

Orchestration: imports the core, ``base.fsutil``, the store (its layout, ``ollama`` and ``archive``) and
``ops.convert``; never the registry, the server or the CLI.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelpkg.base import fsutil
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import IntegrityError, InvalidInputError, InvalidReferenceError, StoreError, UsageError
from modelpkg.core.manifest import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    Index,
    Manifest,
    is_weight_tar,
    layer_role,
    parse_manifest,
)
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference, is_huggingface, parse_reference
from modelpkg.ops.convert import convert
from modelpkg.store import RefEntry, Store, archive, link_annotations
from modelpkg.store.ollama import OllamaName, OllamaStore, check_ollama_name, is_ollama_manifest, parse_ollama_name

LINK_CAVEAT = ("hard links share the file (its inode) with Ollama: an in-place edit of either would change both; "
               "Ollama never edits a blob in place (it writes new files and renames them), so this is safe in "
               "practice. Use --copy for independent copies.")


def _count(methods: dict[str, int], how: str) -> None:
    methods[how] = methods.get(how, 0) + 1


# ---------------------------------------------------------------------------------------------------------
# Ollama -> modelpkg


@dataclass(frozen=True)
class ImportedModel:
    ollama_name: str
    name: str
    digest: Digest
    size: int


@dataclass(frozen=True)
class ImportResult:
    models: tuple[ImportedModel, ...]
    methods: dict[str, int]  # how many blobs: present / reflink / link / copy
    bytes: int

    def to_json(self) -> dict:
        return {"models": [{"ollama_name": m.ollama_name, "name": m.name, "digest": str(m.digest), "size": m.size}
                           for m in self.models],
                "blobs": dict(self.methods), "bytes": self.bytes}


def reference_for(name: OllamaName) -> Reference:
    """The modelpkg name of an Ollama model: the same host/namespace/model:tag (the path lowercased, as
    OCI requires, except under Hugging Face's hosts, whose names keep their case as ``pull`` writes them;
    Ollama matches names case-insensitively anyway)."""
    path = f"{name.namespace}/{name.model}"
    if not is_huggingface(name.host):
        path = path.lower()
    try:
        ref = parse_reference(f"{path}:{name.tag}", default_registry=name.host.lower())
    except InvalidReferenceError as e:
        raise InvalidReferenceError(f"the Ollama name {name.short()} has no modelpkg equivalent: {e.message}",
                                    "rename it in Ollama with 'ollama cp', then import that name") from e
    if ref.host != name.host.lower() or ref.repository != path:
        raise InvalidReferenceError(f"the Ollama name {name.short()} has no modelpkg equivalent")
    return ref


def import_ollama(store: Store, ollama: OllamaStore, names: list[str] | None = None, *, allow_link: bool = True,
                  progress: Progress | None = None) -> ImportResult:
    """Bring Ollama models (``names``, or all of them) into the store under the same names.

    First every manifest is read and every blob checked (present, right size); then the blobs are brought in
    (reflink, else hard link when ``allow_link``, else copy), each hashed and compared with its name; only then
    are the names written. Any failure before that leaves no name behind."""
    progress = progress or NullProgress()
    wanted = [ollama.find(parse_ollama_name(n)) for n in names] if names else ollama.names()
    plan: list[tuple[OllamaName, Reference, Manifest]] = []
    seen: set[tuple] = set()
    for oname in wanted:
        if oname.key in seen:
            continue
        seen.add(oname.key)
        manifest = ollama.read_manifest(oname)
        for desc in manifest.blobs():
            ollama.check_blob(desc, oname)
        plan.append((oname, reference_for(oname), manifest))
    blobs: dict[Digest, Descriptor] = {}
    for _, _, manifest in plan:
        for desc in manifest.blobs():
            blobs.setdefault(desc.digest, desc)
    methods: dict[str, int] = {}
    total = 0
    imported = []
    with store.session() as pins:
        pins.add(*blobs)
        for digest, desc in blobs.items():
            if store.has_blob(digest, desc.size):
                store.touch(digest)
                _count(methods, "present")
                continue
            task = digest.short
            progress.start(task, desc.size, f"importing {digest.short}")
            _, size, how = store.adopt_file(ollama.blob_path(digest), pins, expected=digest, allow_link=allow_link,
                                            progress=progress, task=task)
            progress.finish(task, how)
            if size != desc.size:
                raise IntegrityError(f"blob {digest} has {size} bytes, its manifest says {desc.size}")
            _count(methods, how)
            total += size
        for oname, ref, manifest in plan:
            entry = store.tag(ref, manifest.to_bytes(), manifest.media_type, pins)
            imported.append(ImportedModel(oname.short(), entry.name, entry.digest,
                                          sum(d.size for d in manifest.blobs())))
    return ImportResult(tuple(imported), methods, total)


# ---------------------------------------------------------------------------------------------------------
# modelpkg -> Ollama


@dataclass(frozen=True)
class OllamaExport:
    name: str
    ollama_name: str
    manifest_path: Path
    digest: Digest  # of the manifest file (what 'ollama list' shows as ID)
    methods: dict[str, int]
    converted: bool  # the manifest was rebuilt in Ollama's format (False: the stored one was Ollama's already)
    dropped: tuple[str, ...] = ()  # layers Ollama has no media type for

    def to_json(self) -> dict:
        return {"name": self.name, "ollama_name": self.ollama_name, "manifest": str(self.manifest_path),
                "digest": str(self.digest), "blobs": dict(self.methods), "converted": self.converted,
                "dropped": list(self.dropped)}


def ollama_name_for(ref: Reference) -> OllamaName:
    """``host/namespace/model:tag``: a one-part repository goes into ``library``, as Ollama's own names do."""
    parts = ref.repository.split("/")
    if len(parts) == 1:
        parts = ["library", *parts]
    if len(parts) != 2:
        raise UsageError(f"{ref} has {len(parts)} path parts; Ollama names have two (namespace/model)",
                         "choose the Ollama name with --as host/namespace/model:tag")
    name = OllamaName(ref.host, parts[0], parts[1], ref.tag or "latest")
    check_ollama_name(name)
    return name


def export_ollama(store: Store, ref: Reference, ollama: OllamaStore, *, as_name: str | None = None,
                  allow_link: bool = True, progress: Progress | None = None) -> OllamaExport:
    """Write a model into an Ollama models folder: blobs first (verified), the manifest last.

    A manifest that is Ollama's already (imported from Ollama, pulled from registry.ollama.ai) is written as
    it is; any other is converted by ``ops.convert`` (``formats.to_ollama``: ConfigV2, vnd.ollama layers in
    Ollama's order, messages in Ollama's field order), its new small blobs kept in the store."""
    progress = progress or NullProgress()
    oname = parse_ollama_name(as_name) if as_name else ollama_name_for(ref)
    with store.session() as pins:
        entry, manifest = store.manifest(ref)
        pins.add(entry.digest, *(d.digest for d in manifest.blobs()), *(made for _, made in entry.derived))
        dropped: tuple[str, ...] = ()
        if is_ollama_manifest(manifest) and not entry.derived:
            data, converted = manifest.to_bytes(), False
        else:
            result = convert(store, entry, manifest, "ollama", pins)
            # the file as Ollama's create writes it (json.Encoder: a trailing newline; its push form has none)
            data, converted, dropped = result.manifest_bytes + b"\n", True, result.dropped
            manifest = result.manifest
        methods: dict[str, int] = {}
        for desc in manifest.blobs():
            if not store.has_blob(desc.digest, desc.size):
                raise StoreError(f"blob {desc.digest} of {ref} is missing from the store", "run 'modelpkg verify'")
            task = desc.digest.short
            progress.start(task, desc.size, f"exporting {desc.digest.short}")
            how = ollama.put_blob(desc.digest, store.blob_path(desc.digest), allow_link=allow_link,
                                  progress=progress, task=task)
            progress.finish(task, how)
            _count(methods, how)
        path = ollama.write_manifest(oname, data)
    return OllamaExport(entry.name, oname.short(), path, Digest.of(data), methods, converted, tuple(dropped))


# ---------------------------------------------------------------------------------------------------------
# save / load: OCI image layout archives


@dataclass(frozen=True)
class SaveResult:
    names: tuple[str, ...]
    blobs: int
    bytes: int

    def to_json(self) -> dict:
        return {"names": list(self.names), "blobs": self.blobs, "bytes": self.bytes}


def _blob_size(store: Store, digest: Digest) -> int:
    try:
        return store.blob_path(digest).stat().st_size
    except FileNotFoundError as e:
        raise StoreError(f"blob {digest} is missing from the store", "run 'modelpkg verify'") from e
    except OSError as e:
        raise fsutil.os_error(e, store.blob_path(digest), "reading") from e


def _entry_annotations(entry: RefEntry) -> dict[str, str]:
    """The index annotations that travel with a name: its signatures kept with it, its derived blobs, the
    image index it was pulled through (what those signatures name)."""
    return {mt.REF_NAME: entry.name, **link_annotations(entry.attached, entry.derived, entry.index)}


def _tree(store: Store, digest: Digest, media_type: str | None, size: int, out: dict[Digest, int],
          depth: int = 0) -> None:
    """Every blob reachable from a manifest or index, with its size."""
    if digest in out:
        return
    if depth > 4:
        raise StoreError(f"manifest {digest} nests indexes too deeply")
    out[digest] = size
    parsed = parse_manifest(store.read_blob(digest), media_type)
    if isinstance(parsed, Index):
        for child in parsed.manifests:
            _tree(store, child.digest, child.media_type, child.size, out, depth + 1)
    else:
        for blob in parsed.blobs():
            out.setdefault(blob.digest, blob.size)


def save(store: Store, refs: list[Reference], out: BinaryIO, *, progress: Progress | None = None) -> SaveResult:
    """Write the models as one OCI image layout archive to ``out`` (each name as ``ref.name``)."""
    entries = []
    with store.session() as pins:
        blobs: dict[Digest, int] = {}
        for ref in refs:
            entry = store.resolve(ref)
            pins.add(entry.digest)
            _tree(store, entry.digest, entry.media_type, entry.size, blobs)
            for signature in entry.attached:
                _tree(store, signature, None, _blob_size(store, signature), blobs)
            for _, made in entry.derived:  # e.g. the GGUF taken out of a KitOps tar: no unpacking on load
                blobs.setdefault(made, _blob_size(store, made))
            if entry.index is not None:  # the index's own bytes only: its other platforms were never pulled
                blobs.setdefault(entry.index, _blob_size(store, entry.index))
            entries.append(entry)
        pins.add(*blobs)
        for digest, size in blobs.items():
            if not store.has_blob(digest, size):
                raise StoreError(f"blob {digest} is missing from the store or has the wrong size",
                                 "run 'modelpkg verify', then pull the model again")
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
            {"mediaType": e.media_type, "digest": str(e.digest), "size": e.size,
             "annotations": _entry_annotations(e)} for e in entries]}
        index_json = json.dumps(index, indent=2).encode()
        written = archive.write_archive(out, index_json, [(d, s, store.blob_path(d)) for d, s in blobs.items()],
                                        progress)
    return SaveResult(tuple(e.name for e in entries), len(blobs), written)


@dataclass(frozen=True)
class LoadResult:
    names: tuple[str, ...]
    replaced: tuple[str, ...]
    unnamed: int
    blobs_new: int
    blobs_present: int
    bytes: int

    def to_json(self) -> dict:
        return {"names": list(self.names), "replaced": list(self.replaced), "unnamed": self.unnamed,
                "blobs_new": self.blobs_new, "blobs_present": self.blobs_present, "bytes": self.bytes}


def _check_tree(store: Store, contents: archive.ArchiveContents, desc: Descriptor, depth: int = 0) -> None:
    """The descriptor's blob and everything below it is in the archive (or the store), with the declared sizes."""
    size = contents.size_of(desc.digest)
    if size is None and store.has_blob(desc.digest, desc.size):
        size = desc.size
    if size is None:
        raise InvalidInputError(f"the archive lacks blob {desc.digest}", "save the model again")
    if size != desc.size:
        raise IntegrityError(f"blob {desc.digest} has {size} bytes in the archive, its descriptor says {desc.size}")
    if desc.media_type not in (*mt.MANIFEST_TYPES, *mt.INDEX_TYPES):
        return
    if depth > 4:
        raise InvalidInputError("refusing the archive: indexes nest too deeply")
    if size > MAX_MANIFEST_BYTES:
        raise InvalidInputError(f"refusing the archive: manifest {desc.digest} is {size} bytes "
                                f"(the limit is {MAX_MANIFEST_BYTES})")
    if desc.digest in contents.staged:
        path = contents.staged[desc.digest].path
        data = path.read_bytes()
        if Digest.of(data) != desc.digest:
            raise IntegrityError(f"blob {desc.digest} changed on disk while loading")
    else:
        data = store.read_blob(desc.digest)
    parsed = parse_manifest(data, desc.media_type)
    children = parsed.manifests if isinstance(parsed, Index) else parsed.blobs()
    for child in children:
        _check_tree(store, contents, child, depth + 1)


def _extras(desc: Descriptor) -> tuple[tuple[Digest, ...], tuple[tuple[Digest, Digest], ...], Digest | None]:
    """modelpkg's own index annotations: signature manifests kept with the name, derived blobs, the image
    index the model was pulled through."""
    try:
        attached = tuple(Digest.parse(t) for t in desc.annotations.get(mt.ATTACHED, "").split())
        derived = []
        for pair in desc.annotations.get(mt.DERIVED, "").split():
            layer, _, made = pair.partition("=")
            derived.append((Digest.parse(layer), Digest.parse(made)))
        source = desc.annotations.get(mt.SOURCE_INDEX)
        index = Digest.parse(source) if source else None
    except InvalidInputError as e:
        raise InvalidInputError(f"refusing the archive: a bad digest in index.json annotations: {e.message}") from e
    return attached, tuple(derived), index


def _found(store: Store, contents: archive.ArchiveContents, digest: Digest, media_type: str | None) -> Descriptor:
    """A descriptor for a blob the archive (or the store) holds; the archive must not name a missing one."""
    size = contents.size_of(digest)
    if size is None:
        try:
            size = store.blob_path(digest).stat().st_size
        except OSError:
            raise InvalidInputError(f"the archive lacks blob {digest}", "save the model again") from None
    if media_type is None:  # a kept signature: read to learn what it is (a manifest, capped)
        if size > MAX_MANIFEST_BYTES:
            raise InvalidInputError(f"refusing the archive: manifest {digest} is {size} bytes")
        path = contents.staged[digest].path if digest in contents.staged else store.blob_path(digest)
        parsed = parse_manifest(path.read_bytes())
        media_type = parsed.media_type
    return Descriptor(media_type, digest, size)


def load(store: Store, inp: BinaryIO, *, resolve_name: Callable[[str], Reference] = parse_reference,
         progress: Progress | None = None) -> LoadResult:
    """Bring in the models of an OCI layout archive read from ``inp`` (a stream; never held in memory).

    Every blob is verified while it streams into a temp file; then every named tree is checked whole; only
    then are the blobs moved into place and, last, the names written. A damaged or hostile archive leaves the
    store as it was."""
    progress = progress or NullProgress()
    contents = archive.read_archive(inp, store, progress=progress)
    try:
        if contents.index_json is None:
            raise InvalidInputError("the archive has no index.json: it is not an OCI image layout archive")
        index = parse_manifest(contents.index_json, mt.OCI_INDEX)
        if not isinstance(index, Index):
            raise InvalidInputError("the archive's index.json is not an OCI index")
        named: list[tuple[Reference, Descriptor, tuple[Digest, ...], tuple[tuple[Digest, Digest], ...],
                          Digest | None]] = []
        unnamed = 0
        for desc in index.manifests:
            text = desc.annotations.get(mt.REF_NAME)
            if not text:
                unnamed += 1
                continue
            attached, derived, source_index = _extras(desc)
            named.append((resolve_name(text), desc, attached, derived, source_index))
        if not named:
            raise InvalidInputError("the archive names no model (no org.opencontainers.image.ref.name in index.json)")
        for _, desc, attached, derived, source_index in named:
            _check_tree(store, contents, desc)
            for signature in attached:
                _check_tree(store, contents, _found(store, contents, signature, None))
            for _, made in derived:
                _found(store, contents, made, "application/octet-stream")
            if source_index is not None:
                _found(store, contents, source_index, "application/octet-stream")
        new_blobs = len(contents.staged)
        new_bytes = sum(staged.size for staged in contents.staged.values())
        with store.session() as pins:
            pins.add(*contents.present, *contents.staged)
            existing = {e.name for e in store.refs()}
            for digest, staged in list(contents.staged.items()):
                staged.commit(pins)
                del contents.staged[digest]
            for digest in contents.present:
                store.touch(digest)
            for ref, desc, attached, derived, source_index in named:  # the names last
                store.set_ref(ref, desc.digest, desc.media_type, desc.size, attached, derived, index=source_index)
    finally:
        contents.discard()
    names = tuple(str(ref) for ref, *_ in named)
    return LoadResult(names, tuple(n for n in names if n in existing), unnamed, new_blobs,
                      len(contents.present), new_bytes)


# ---------------------------------------------------------------------------------------------------------
# export: the model's files under their names

_DEFAULT_FILES = {"model": "model.gguf", "adapter": "adapter.gguf", "projector": "projector.gguf",
                  "template": "template", "system": "system.txt", "params": "params.json",
                  "messages": "messages.json", "license": "LICENSE", "chat_template": "chat_template.jinja"}
_WEIGHTS = {"model", "adapter", "projector", "tensor"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_relpath(title: str | None) -> str | None:
    """A manifest-supplied file name as a safe relative path, or None when it cannot be one.

    Refused: empty, absolute (``/x``, ``\\x``, ``C:``), any ``..`` part, control characters (NUL, newline),
    parts longer than 255 bytes. Backslashes count as separators; ``.`` parts are dropped."""
    if not title or len(title) > 1024 or _CONTROL.search(title):
        return None
    text = title.replace("\\", "/")
    if text.startswith("/") or re.match(r"[A-Za-z]:", text):
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or len(p.encode("utf-8")) > 255 for p in parts):
        return None
    return "/".join(parts)


@dataclass(frozen=True)
class ExportedFile:
    path: str
    role: str | None
    digest: Digest
    size: int
    how: str


@dataclass(frozen=True)
class ExportFilesResult:
    name: str
    folder: Path
    files: tuple[ExportedFile, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"name": self.name, "folder": str(self.folder), "notes": list(self.notes),
                "files": [{"path": f.path, "role": f.role, "digest": str(f.digest), "size": f.size, "how": f.how}
                          for f in self.files]}


def _file_plan(entry: RefEntry, manifest: Manifest,
               size_of: Callable[[Digest], int]) -> tuple[list[tuple[str, str | None, Descriptor]], list[str]]:
    """(relative path, role, blob) for each layer worth writing, and notes about renamed or skipped ones.

    A layer with a derived blob (the GGUF inside a KitOps tar) is written as that blob, under the role's name."""
    notes: list[str] = []
    used: set[str] = set()
    plan = []
    for layer in manifest.layers:
        role = layer_role(layer)
        title = layer.title
        path = safe_relpath(title)
        local = entry.local(layer.digest)
        if local == layer.digest and is_weight_tar(layer):  # a tar no GGUF came out of (safetensors)
            notes.append(f"layer {layer.digest.short}: a tar of weights that are not GGUF; skipped")
            continue
        if local != layer.digest:
            path, title = None, None
            layer = Descriptor(layer.media_type, local, size_of(local))
        if path is None:
            if role not in _DEFAULT_FILES:
                why = f"unsafe file name {title[:80]!r}" if title else f"no file name ({layer.media_type[:60]})"
                notes.append(f"layer {layer.digest.short}: {why}; skipped")
                continue
            path = _DEFAULT_FILES[role]
            if title:
                notes.append(f"layer {layer.digest.short}: unsafe file name {title[:80]!r}; written as {path}")
        stem, dot, ext = path.rpartition(".") if "." in path.rsplit("/", 1)[-1] else (path, "", "")
        n = 1
        while path.lower() in used:
            n += 1
            path = f"{stem}-{n}{dot}{ext}" if dot else f"{stem}-{n}"
        used.add(path.lower())
        plan.append((path, role, layer))
    return plan, notes


def _safe_parent(root: Path, rel: str) -> Path:
    """Create the folders of ``rel`` under ``root``, refusing to pass through a link."""
    folder = root
    for part in rel.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise StoreError(f"{folder} is a symbolic link; refusing to write through it")
        try:
            folder.mkdir(mode=0o755, exist_ok=True)
        except FileExistsError as e:
            raise StoreError(f"{folder} exists and is not a folder") from e
        except OSError as e:
            raise fsutil.os_error(e, folder, "creating") from e
    return folder


def export_files(store: Store, ref: Reference, dest: Path, *, allow_link: bool = True,
                 progress: Progress | None = None) -> ExportFilesResult:
    """Write the model's layers as files in ``dest``. Weights are reflinked, else hard-linked (``allow_link``),
    else copied; small text files are always copied (an editor may change them in place). Each file is
    verified, written to a temp file and renamed over its name, so a link already there is replaced, not
    followed."""
    progress = progress or NullProgress()
    with store.session() as pins:
        entry, manifest = store.manifest(ref)
        pins.add(*(d.digest for d in manifest.blobs()))
        plan, notes = _file_plan(entry, manifest, lambda d: _blob_size(store, d))
        pins.add(*(layer.digest for _, _, layer in plan))
        if dest.is_symlink():
            dest = dest.resolve()
        try:
            dest.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as e:
            raise fsutil.os_error(e, dest, "creating") from e
        files = []
        for rel, role, layer in plan:
            folder = _safe_parent(dest, rel)
            target = folder / rel.rsplit("/", 1)[-1]
            if target.is_dir() and not target.is_symlink():
                raise StoreError(f"{target} is a folder; cannot write {rel} there")
            tmp = fsutil.temp_name(folder, ".modelpkg-export")
            task = layer.digest.short
            progress.start(task, layer.size, f"writing {rel}")
            _, _, how = fsutil.place_file(store.blob_path(layer.digest), tmp,
                                          allow_link=allow_link and role in _WEIGHTS,
                                          expected=layer.digest, progress=progress, task=task)
            try:
                os.replace(tmp, target)
            except OSError as e:
                raise fsutil.os_error(e, target, "writing") from e
            finally:
                fsutil.unlink_quietly(tmp)  # rename(2) leaves both names when they are links to one file already
            progress.finish(task, how)
            files.append(ExportedFile(rel, role, layer.digest, layer.size, how))
        fsutil.fsync_dir(dest)
    return ExportFilesResult(entry.name, dest, tuple(files), tuple(notes))

