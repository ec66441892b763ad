"""Weights in a tar: the GGUF inside a KitOps model tar or a ModelPack ``weight.v1.tar`` layer, taken out
into a blob of its own.

A ModelKit's model layer is a tar (maybe gzipped) holding the GGUF; so is a ModelPack weights layer of media
type ``application/vnd.cncf.model.weight.v1.tar`` (``+gzip``, ``+zstd``: what modctl ``--raw=false`` and KitOps
``--use-model-pack`` write). zstd needs the ``zstandard`` package (``pip install 'modelpkg[zstd]'``). A tar
that holds safetensors and no GGUF is kept as it is (nothing derived): ``show`` calls it safetensors and
``run`` says llama.cpp runs GGUF only. After a pull the GGUF is extracted,
streaming, into its own blob (``store.ingest``), recorded on the name's index entry (``Store.tag``
``derived=``) and read in place of the tar by show, run and push's conversions (``RefEntry.local``); gc
keeps it while the name exists. An extraction already made for another name is reused.

The tar is untrusted input: it is checked whole on the way and refused if any member could escape a folder
or is anything but a regular file or folder, as KitOps's own unpack refuses them.

Orchestration: imports the core, the store and ``runtime.ggufmeta``; never the registry, the server or the CLI.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError
from modelpkg.core.manifest import Descriptor, Manifest, is_weight_tar, layer_role
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.runtime import ggufmeta
from modelpkg.store import Pins, Store, ingest

if TYPE_CHECKING:
    import tarfile

MAX_TAR_MEMBERS = 10_000
MAX_EXPANSION = 16  # a GGUF in a gzipped tar is at most this many times the layer (weights barely compress)
MIN_CAP = 256 * 1024 * 1024


def derive_blobs(store: Store, manifest: Manifest, pins: Pins,
                 progress: Progress | None = None) -> tuple[tuple[Digest, Digest], ...]:
    """Derived blobs for the layers that need one: (layer digest, derived digest) pairs."""
    out = []
    known = {layer: made for entry in store.refs() for layer, made in entry.derived}
    for layer in derivable(manifest):
        made = known.get(layer.digest)
        if made is not None and store.has_blob(made):
            pins.add(made)
            store.touch(made)
        else:
            (progress or NullProgress()).message(f"extracting the GGUF from {layer.digest.short}")
            made = extract_gguf(store, layer, pins)
        # None: the tar holds safetensors, no GGUF. Recorded as derived from itself, so a pull of the unchanged
        # model knows the tar was read and does not read it again (show still finds no GGUF: see describe)
        out.append((layer.digest, made if made is not None else layer.digest))
    return tuple(out)


def derivable(manifest: Manifest) -> list[Descriptor]:
    """The layers that get a derived blob: a KitOps model tar, a ModelPack weights tar."""
    return [layer for layer in manifest.layers if is_weight_tar(layer) and layer_role(layer) == "model"]


def extract_gguf(store: Store, layer: Descriptor, pins: Pins) -> Digest | None:
    """Stream the GGUF file out of the tar blob ``layer`` into its own blob, verified as GGUF.

    The whole tar is checked on the way and refused if any member is a link, a device, an absolute path or
    a path with ``..`` (KitOps's own unpack refuses these too), or if it holds more than
    ``MAX_TAR_MEMBERS`` members; the GGUF is the first ``*.gguf`` regular file. None when the tar holds no GGUF
    but ``*.safetensors`` files (weights kept, not runnable here)."""
    import tarfile  # here, not at the top: pull, chat and so run import this module, and few pulls are KitOps

    found: ingest.Staged | None = None
    safetensors = False
    with ExitStack() as cleanup:  # the staged GGUF goes if anything after it is refused
        try:
            raw = cleanup.enter_context(store.open_blob(layer.digest))
            stream = _decompressed(layer, raw, cleanup)
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for count, member in enumerate(tar, 1):
                    name = _checked_name(layer, member, count)
                    safetensors = safetensors or name.lower().endswith(".safetensors")
                    if found is None and member.isfile() and name.lower().endswith(".gguf"):
                        source = tar.extractfile(member)
                        assert source is not None
                        found = cleanup.enter_context(ingest.stage(store, source, prefix="kitops"))
                        if found.size != member.size:
                            raise _refused(layer, f"{member.name[:200]!r} is truncated")
        except (tarfile.TarError, EOFError, OSError, *_zstd_errors(layer)) as e:  # zlib/gzip: OSError/EOFError
            raise _refused(layer, f"not a valid tar: {str(e)[:160]}") from e
        if found is None and safetensors:
            return None
        if found is None:
            raise _refused(layer, "it holds no .gguf file")
        ggufmeta.check_magic(found.path)
        return found.commit(pins)


def _is_zstd(layer: Descriptor) -> bool:
    return layer.media_type.split(";", 1)[0].strip().endswith("zstd")


def _zstd_errors(layer: Descriptor) -> tuple[type[BaseException], ...]:
    """What a damaged zstd stream raises (imported only for a zstd layer: pull and run import this module)."""
    if not _is_zstd(layer):
        return ()
    try:
        from zstandard import ZstdError
    except ImportError:
        return ()
    return (ZstdError,)


def _decompressed(layer: Descriptor, raw, cleanup: ExitStack):
    """The tar stream of ``raw``: zstd layers (``+zstd``) decompressed here; gzip is tarfile's own ``r|*``."""
    if not _is_zstd(layer):
        return raw
    try:
        import zstandard
    except ImportError as e:
        raise InvalidInputError(f"the model layer {layer.digest.short} is a zstd-compressed tar, and the zstandard "
                                "package is not installed", "install it: pip install 'modelpkg[zstd]'") from e
    # read_across_frames: a layer written as several zstd frames is one stream
    return cleanup.enter_context(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))


def _checked_name(layer: Descriptor, member: tarfile.TarInfo, count: int) -> str:
    """The member's name with ``/`` separators, or the tar refused at this member: too many members, an
    unsafe path, a link or device, an absurd size."""
    if count > MAX_TAR_MEMBERS:
        raise _refused(layer, f"more than {MAX_TAR_MEMBERS} members")
    name = member.name.replace("\\", "/")
    if name.startswith("/") or ".." in name.split("/") or ":" in name.split("/", 1)[0]:
        raise _refused(layer, f"unsafe path {member.name[:200]!r}")
    if member.issym() or member.islnk():
        raise _refused(layer, f"{member.name[:200]!r} is a link")
    if not (member.isfile() or member.isdir()):
        raise _refused(layer, f"{member.name[:200]!r} is not a regular file or folder")
    if member.isfile() and member.size > max(MAX_EXPANSION * layer.size, MIN_CAP):
        raise _refused(layer, f"{member.name[:200]!r} claims {member.size} bytes, too many for a "
                              f"{layer.size}-byte layer")
    return name


def _refused(layer: Descriptor, why: str) -> InvalidInputError:
    kind = "KitOps model" if layer.media_type.startswith("application/vnd.kitops.") else "model tar"
    return InvalidInputError(f"the {kind} layer {layer.digest.short} is refused: {why}",
                             "ask the publisher for a ModelKit whose model tar holds plain files")
