"""``create``: turn a Modelfile into a model in the store.

Parsing is pure (``modelpkg.core.modelfile``); this module resolves what the Modelfile names (FROM a GGUF
file, a folder holding one, a blob already in the store as ``sha256:<hex>``, or a model already in the
store; ADAPTER files), ingests files in one pass, and writes the manifest and its name last, so a failure at
any point leaves the store as it was (blobs already written are unreferenced and go at the next gc). The
Modelfile kept in the manifest names files by digest, never by local path (``published_modelfile``).

A split GGUF (``name-00001-of-00003.gguf``...: llama.cpp's gguf-split naming) is taken whole from its first
shard or the folder holding it: every shard is checked (its name, and ``split.no``/``split.count`` in its
header) before any is stored, then each becomes a weights layer titled with its file name, in order.

Two modes. The CLI's (``base_dir`` is the Modelfile's folder) reads local files, as Ollama's CLI does. The
API's (``base_dir=None``, what ``/api/create`` uses) never touches a path: FROM, ADAPTER and DRAFT may only
name a blob already in the store by digest (``sha256:<hex>``, or ``@sha256:<hex>`` as older ollama CLIs
sent it after uploading the file to ``/api/blobs``) or, for FROM and DRAFT, a model in the store; anything
that could be a path is refused by ``check_api_modelfile`` with one error (``PATHS_REFUSED``) whose text
depends neither on the value nor on what exists on the server, so the API is no oracle for "does this file
exist?" (CVE-2024-39719) and cannot make a model of a server file to push elsewhere.

``quantize`` (``create --quantize q4_K_M``, ``/api/create``'s ``quantize``) makes the weights layer with
llama.cpp's quantizer (``runtime.quantize``, in a child process) from an F32, F16 or BF16 source: a FROM file
is read where it is (never copied into the store first), a blob or a model's weights from the store; the
output goes to a temp file in the store's ``ingest/`` and is hashed and renamed into place like any ingest, so
a failure or Ctrl-C leaves no blob. A source already of the asked type is kept as it is (Ollama's rule).

Orchestration: imports the core and the store adapters.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from modelpkg.base import fsutil
from modelpkg.core import mediatypes as mt
from modelpkg.core import modelfile as mf
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError, ModelfileError, NotFoundError, TemplateError
from modelpkg.core.manifest import (
    Descriptor,
    ModelLayers,
    go_json,
    model_layers,
    modelpack_config,
    modelpack_layer,
    modelpack_manifest,
    split_name,
)
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference, parse_reference
from modelpkg.runtime import ggufmeta
from modelpkg.runtime import quantize as quantizer
from modelpkg.store import Pins, RefEntry, Store

# The one answer for every path in a request (never the value itself: the text must not vary with it).
PATHS_REFUSED = ("FROM, ADAPTER and DRAFT sent to the API cannot name a file on the server: name a model in the "
                 "store, or upload the file with POST /api/blobs/sha256:<hex> and name it by that digest "
                 "(FROM sha256:<hex>, or the request's \"files\" and \"adapters\")")
_URL_OR_DRIVE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[/\\]")  # file:/x, file:///x, http://x, C:\x, C:/x


@dataclass(frozen=True)
class CreateResult:
    entry: RefEntry
    layers: tuple[Descriptor, ...]


def create(store: Store, ref: Reference, text: str, base_dir: Path | None, *, link: bool = False,
           progress: Progress | None = None, resolve_name=parse_reference,
           quantize: str | None = None) -> CreateResult:
    """Build the model that ``text`` (a Modelfile read from ``base_dir``) describes and name it ``ref``.

    ``base_dir`` None is the API's mode: no path is read, only blobs and models in the store (see the module
    docstring). ``resolve_name`` parses a FROM model name into a Reference (the CLI passes one that knows the
    configured default registry). ``quantize`` (a type ``runtime.quantize.parse_type`` accepts) quantizes the
    weights (see the module docstring).
    """
    progress = progress or NullProgress()
    want = quantizer.parse_type(quantize) if quantize else None
    parsed = mf.parse(text)
    if base_dir is None:
        check_api_modelfile(parsed)
    params = parsed.parameters()
    template = parsed.template
    if template is not None:
        _check_template(template, parsed)
    store.init()
    with store.session() as pins:
        base, info, from_file = _resolve_from(store, parsed, base_dir, pins, link, progress, resolve_name, want)
        if base.shards:  # a split GGUF: every shard a weights layer under its own file name, in order
            base = _shard_layers(base, info)
        else:
            base = replace(base, model=modelpack_layer("model", base.model.digest, base.model.size,
                                                       info.context_length))
        layers = _layers(store, parsed, params, base, base_dir, pins, progress)
        adapter = next((layer.digest for layer in layers if layer.annotations.get(mt.ROLE) == "adapter"), None)
        published = published_modelfile(parsed, base_dir, base.model.digest if from_file else None,
                                         adapter if parsed.adapter is not None else None)
        config_bytes = modelpack_config(
            architecture=info.architecture, param_size=info.param_size, quantization=info.file_type,
            name=info.name, diff_ids=[layer.digest for layer in layers],
        )
        config = Descriptor(mt.MODELPACK_CONFIG, store.put_bytes(config_bytes, pins), len(config_bytes))
        manifest = modelpack_manifest(config, layers, {mt.MODELFILE: published, mt.FORMAT_VERSION: "1"})
        progress.message("writing manifest")
        entry = store.tag(ref, manifest.to_bytes(), mt.OCI_MANIFEST, pins)
    return CreateResult(entry, tuple(layers))


def published_modelfile(parsed: mf.Modelfile, base_dir: Path | None, weights: Digest | None,
                        adapter: Digest | None) -> str:
    """The Modelfile as the manifest annotation keeps it, and so as every push publishes it: no local paths.

    The FROM that named a local file (or folder) names the weights layer by digest instead, ``FROM
    sha256:<hex>``, and the ADAPTER its layer: the digest is what the manifest already says, reveals no
    folder or file name, and is what ``create`` accepts back for a blob in the store (Ollama's create API
    names uploaded files by digest the same way). A FROM naming a model (``FROM llama3``) stays. Other
    FROM/ADAPTER/DRAFT lines naming a path went unused by create (a second FROM, an earlier ADAPTER, DRAFT)
    and are left out, and so are comments: the text is written in canonical form (``mf.format``), so the
    manifest digest depends on the model's definition only, not on the folder or file names it came from.
    """
    froms = [n for n, ins in enumerate(parsed.instructions) if ins.keyword == "from"]
    used = {froms[0]: weights}  # the first FROM is the model (Modelfile.from_)
    if adapter is not None:  # the last ADAPTER is the one loaded (Modelfile.adapter)
        used[max(n for n, ins in enumerate(parsed.instructions) if ins.keyword == "adapter")] = adapter
    kept = []
    for n, ins in enumerate(parsed.instructions):
        if used.get(n) is not None:
            kept.append(replace(ins, value=str(used[n])))
        elif n not in used and ins.keyword in ("from", "adapter", "draft") and _is_local(ins.value, base_dir):
            continue
        else:
            kept.append(ins)
    return mf.format(mf.Modelfile(tuple(kept)))


def check_api_modelfile(parsed: mf.Modelfile) -> None:
    """The API's rule, checked before anything is read: every FROM, ADAPTER and DRAFT value is a blob digest
    or (FROM, DRAFT) something that can only be a model name; anything else is ``PATHS_REFUSED``. Pure: it
    looks at the text only, so its answer cannot depend on the server's files."""
    for ins in parsed.instructions:
        if ins.keyword not in ("from", "adapter", "draft") or _blob_digest(ins.value) is not None:
            continue
        if ins.keyword == "adapter" or _could_be_path(ins.value):
            raise InvalidInputError(PATHS_REFUSED, "")


def _could_be_path(value: str) -> bool:
    """Could a FROM/DRAFT value be read as a path or a URL to one? (A valid model name never is.)"""
    return _looks_like_path(value) or "\\" in value or ".." in value or _URL_OR_DRIVE.match(value) is not None


def _is_local(value: str, base_dir: Path | None) -> bool:
    """Does a FROM/ADAPTER/DRAFT value name a local path (rather than a model or a blob digest)? In the API's
    mode (no ``base_dir``) nothing is looked up: only what reads as a path is one."""
    if _blob_digest(value) is not None:
        return False
    return _looks_like_path(value) or (base_dir is not None and expand_path(value, base_dir).exists())


def _blob_digest(value: str) -> Digest | None:
    """``sha256:<hex>`` in FROM or ADAPTER names a blob in the store (as the published Modelfile writes it);
    ``@sha256:<hex>`` too (older ollama CLIs rewrote FROM to it after uploading the file)."""
    value = value[1:] if value.startswith("@sha256:") else value
    if not value.startswith("sha256:"):
        return None
    try:
        return Digest.parse(value)
    except InvalidInputError:
        return None


def _check_template(template: str, parsed: mf.Modelfile) -> None:
    """A template that does not parse is an error now, at create time, not when the model runs."""
    from modelpkg.core import gotemplate

    try:
        gotemplate.parse(template)
    except TemplateError as e:
        line = next((i.line for i in parsed.instructions if i.keyword == "template"), None)
        raise ModelfileError(f"TEMPLATE does not parse: {e.message}", line) from e


def expand_path(value: str, base_dir: Path) -> Path:
    """FROM/ADAPTER paths: ``~`` expanded; relative to the Modelfile's folder, as Ollama resolves them."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base_dir / path


def _find_gguf(path: Path) -> Path:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        first = _first_shard(found)
        if first is not None:  # a folder of one split GGUF's shards: FROM its first one
            return first
        if len(found) != 1:
            raise InvalidInputError(
                f"{path} holds {len(found)} .gguf files; FROM a folder needs exactly one",
                "name the .gguf file in FROM",
            )
        return found[0]
    return path


def _resolve_from(store: Store, parsed: mf.Modelfile, base_dir: Path | None, pins: Pins, link: bool,
                  progress: Progress, resolve_name,
                  quantize: str | None = None) -> tuple[ModelLayers, ggufmeta.GGUFInfo, bool]:
    """The base model's layers, its GGUF's metadata, and whether FROM named a file (or a blob) rather
    than a model. A file of that name wins over a blob digest and a model name (CLI mode only). With
    ``quantize``, the weights are that source quantized."""
    value = parsed.from_
    line = next((i.line for i in parsed.instructions if i.keyword == "from"), None)
    path = expand_path(value, base_dir) if base_dir is not None else None
    if path is not None and path.exists():
        gguf = _find_gguf(path)
        ggufmeta.check_magic(gguf)
        shards = split_set(gguf)
        if shards is not None:
            if quantize is not None:
                raise ModelfileError(f"FROM {value} is a split GGUF, which --quantize does not take", line,
                                     "merge it with llama.cpp's llama-gguf-split --merge, or quantize it there")
            return _from_shards(store, shards, pins, link, progress, value, line)
        if quantize is not None:
            quantized = _quantized(store, gguf.resolve(), ggufmeta.read_info(gguf), quantize, f"FROM {value}", line,
                                   pins, progress)
            if quantized is not None:
                return ModelLayers(model=quantized[0]), quantized[1], True
        # Read the metadata (importing numpy and gguf takes ~0.3 s) while the weights are copied.
        with ThreadPoolExecutor(max_workers=1) as pool:
            reading = pool.submit(ggufmeta.read_info, gguf)
            model = _ingest(store, gguf, "model", pins, link, progress)
            info = reading.result()
        if info.model_type == "adapter":
            raise ModelfileError(f"FROM {value} is a LoRA adapter, not a model", line, "use ADAPTER for it")
        return ModelLayers(model=model), info, True
    blob = _blob_digest(value)
    if blob is not None:
        gguf = _stored_gguf(store, blob, pins, "FROM", line)
        info = ggufmeta.read_info(gguf)
        if info.model_type == "adapter":
            raise ModelfileError(f"FROM {value} is a LoRA adapter, not a model", line, "use ADAPTER for it")
        quantized = _quantized(store, gguf, info, quantize, f"FROM {value}", line, pins, progress)
        if quantized is not None:
            return ModelLayers(model=quantized[0]), quantized[1], True
        return ModelLayers(model=modelpack_layer("model", blob, gguf.stat().st_size)), info, True
    if path is not None and _looks_like_path(value):
        raise ModelfileError(f"FROM {value}: file not found ({path})", line)
    base, info, from_file = _from_model(store, value, line, pins, resolve_name, files=base_dir is not None)
    assert base.model is not None
    quantized = _quantized(store, store.blob_path(base.model.digest), info, quantize, f"FROM {value}", line, pins,
                           progress)
    if quantized is not None:
        base = replace(base, model=quantized[0])
        info = quantized[1]
    return base, info, from_file


def _quantized(store: Store, src: Path, info: ggufmeta.GGUFInfo, want: str | None, subject: str, line: int | None,
               pins: Pins, progress: Progress) -> tuple[Descriptor, ggufmeta.GGUFInfo] | None:
    """The weights layer of ``src`` quantized to ``want``, and its metadata; None when there is nothing to
    do (no ``want``, or the source is of that type already). An already-quantized source is refused before
    anything is written."""
    if want is None or info.file_type == want:
        return None
    if info.model_type == "adapter":
        raise ModelfileError(f"{subject} is a LoRA adapter, not a model", line, "use ADAPTER for it")
    quantizer.check_source(info.file_type, subject, want)
    tmp = store.temp_path("quantize")
    task = f"quantize:{want}"
    with fsutil.removing_on_error(tmp):
        quantizer.quantize(src, tmp, want, progress=progress, task=task,
                           label=f"quantizing {info.file_type} model to {want}")
        progress.message(f"hashing {want} weights")
        digest, size = fsutil.hash_file(tmp)
        new_info = ggufmeta.read_info(tmp)
        store.commit_temp(tmp, digest, pins)
    return modelpack_layer("model", digest, size), new_info


def _from_model(store: Store, value: str, line: int | None, pins: Pins, resolve_name,
                files: bool) -> tuple[ModelLayers, ggufmeta.GGUFInfo, bool]:
    """FROM a model in the store: its layers (pinned) and its weights' metadata."""
    try:
        base_ref = resolve_name(value)
    except InvalidInputError as e:
        what = "not a file, and not" if files else "not"
        raise ModelfileError(f"FROM {value}: {what} a valid model name ({e.message})", line) from e
    try:
        entry, manifest = store.manifest(base_ref)
    except NotFoundError as e:
        if not files:
            raise ModelfileError(f"FROM {value}: no model {base_ref.short()} in the store", line,
                                 "pull the model first, or upload its GGUF to /api/blobs and name it by digest") from e
        raise ModelfileError(f"FROM {value}: no such file, and no model {base_ref.short()} in the store", line,
                             "check the path (relative to the Modelfile's folder) or pull the model first") from e
    base = model_layers(manifest)
    if base.model is None:
        raise ModelfileError(f"FROM {value}: that model has no GGUF weights layer", line)
    weights = entry.local(base.model.digest)
    pins.add(*(blob.digest for blob in manifest.layers), weights)
    if weights != base.model.digest:  # a derived GGUF (from a KitOps tar): the new model uses it directly
        base = replace(base, model=Descriptor(mt.MODELPACK_WEIGHT, weights, store.blob_path(weights).stat().st_size))
    return base, ggufmeta.read_info(store.blob_path(weights)), False


def _first_shard(found: list[Path]) -> Path | None:
    """The lowest-numbered file of a folder holding only the shards of one split GGUF (else None)."""
    names = [split_name(p.name) for p in found]
    if len(found) < 2 or any(n is None for n in names) or len({(n[0], n[2]) for n in names}) != 1:
        return None
    return min(zip(names, found, strict=True))[1]


def split_set(first: Path) -> list[Path] | None:
    """Every shard of the split GGUF whose first shard is ``first``, in order; None when ``first`` is not named
    as a shard. A shard that is not there, or FROM a shard other than the first, is one line."""
    name = split_name(first.name)
    if name is None:
        return None
    prefix, no, count = name
    def shard(n: int) -> Path:
        return first.parent / f"{prefix}-{n:05d}-of-{count:05d}{first.name[-5:]}"
    if no != 1:
        raise InvalidInputError(f"{first.name} is shard {no} of {count} of a split GGUF; FROM takes the first one",
                                f"FROM {shard(1)} (or the folder holding the shards)")
    paths = [shard(n) for n in range(1, count + 1)]
    for n, path in enumerate(paths, 1):
        if not path.is_file():
            raise InvalidInputError(f"shard {n} of {count} of the split GGUF {prefix} is missing: no {path.name} "
                                    f"in {first.parent}", "put every shard of the split in one folder, named "
                                    "as llama.cpp's gguf-split names them (NAME-0000i-of-0000N.gguf)")
    return paths


def _from_shards(store: Store, paths: list[Path], pins: Pins, link: bool, progress: Progress, value: str,
                 line: int | None) -> tuple[ModelLayers, ggufmeta.GGUFInfo, bool]:
    """FROM a split GGUF: each shard's header checked (it is shard n of this set), then each one stored."""
    infos = [check_shard(path, n, len(paths)) for n, path in enumerate(paths)]
    tensors = {info.metadata.get("split.tensors.count") for info in infos}
    if len(tensors) > 1:
        raise InvalidInputError(f"the shards of {paths[0].name} are not one split: their headers give different "
                                f"tensor counts ({', '.join(str(t) for t in sorted(tensors, key=str))})",
                                "put the shards of one gguf-split run together; a shard of another split "
                                "set has the same name pattern but other contents")
    info = infos[0]
    if info.model_type == "adapter":
        raise ModelfileError(f"FROM {value} is a LoRA adapter, not a model", line, "use ADAPTER for it")
    layers = tuple(replace(_ingest(store, path, "model", pins, link, progress), annotations={mt.TITLE: path.name})
                   for path in paths)  # titled with the file name; create() makes each a ModelPack layer
    info = replace(info, param_count=sum(i.param_count for i in infos))  # each shard counts its own tensors
    return ModelLayers(model=layers[0], shards=layers), info, True


def check_shard(path: Path, index: int, count: int) -> ggufmeta.GGUFInfo:
    """``path``'s metadata, or one line saying it is not shard ``index`` (from 0) of a ``count``-file split."""
    ggufmeta.check_magic(path)
    info = ggufmeta.read_info(path)
    said = (info.metadata.get("split.no"), info.metadata.get("split.count"))
    if said != (index, count):
        header = (f"its header says shard {said[0] + 1} of {said[1]}" if all(isinstance(v, int) for v in said)
                  else "its header has no split.no/split.count")
        raise InvalidInputError(f"{path.name} is not shard {index + 1} of {count}: {header}",
                                "it belongs to another split set, or was renamed; split the model again "
                                "with llama.cpp's gguf-split, or gather the shards of one set")
    return info


def _shard_layers(base: ModelLayers, info: ggufmeta.GGUFInfo) -> ModelLayers:
    """Each shard as a ModelPack weights layer titled with its file name (the first records the context)."""
    count = len(base.shards)
    shards = tuple(modelpack_layer("model", s.digest, s.size, info.context_length if n == 0 else None,
                                   title=s.title if split_name(s.title) else f"model-{n + 1:05d}-of-{count:05d}.gguf")
                   for n, s in enumerate(base.shards))
    return replace(base, model=shards[0], shards=shards)


def _stored_gguf(store: Store, digest: Digest, pins: Pins, keyword: str, line: int | None) -> Path:
    """The GGUF blob ``digest`` in the store, pinned (FROM/ADAPTER ``sha256:<hex>``)."""
    pins.add(digest)
    path = store.blob_path(digest)
    if not store.has_blob(digest):
        raise ModelfileError(f"{keyword} {digest}: no such blob in the store", line,
                             "upload it (POST /api/blobs/<digest>), pull or create the model it belongs to, "
                             "or name the file")
    try:
        ggufmeta.check_magic(path)
    except InvalidInputError as e:  # its message names the blob's path in the store: say it by digest
        raise ModelfileError(f"{keyword} {digest}: that blob is not a GGUF file", line) from e
    return path


def _looks_like_path(value: str) -> bool:
    """A FROM value that can only mean a file: a missing one is reported as a missing file, not a model."""
    return value.startswith((".", "/", "~")) or value.lower().endswith(".gguf")


def _ingest(store: Store, path: Path, role: str, pins: Pins, link: bool, progress: Progress) -> Descriptor:
    # A symlink (every file in the Hugging Face cache is a relative one into its blobs/) is followed to its
    # target: a hard link of the link itself would be a dangling link inside the store.
    shown, path = path.name, path.resolve()
    size = path.stat().st_size
    task = f"{role}:{shown}"
    progress.start(task, size, f"copying {shown}")
    digest, size = store.ingest_file(path, pins, link=link, progress=progress, task=task)
    progress.finish(task)
    return modelpack_layer(role, digest, size)


def _text_layer(store: Store, role: str, data: bytes, pins: Pins) -> Descriptor:
    return modelpack_layer(role, store.put_bytes(data, pins), len(data))


def _adapter_layer(store: Store, parsed: mf.Modelfile, base_dir: Path | None, pins: Pins,
                   progress: Progress) -> Descriptor:
    """The last ADAPTER's layer: a file (CLI mode only; a file of that name wins over a digest), or a blob."""
    adapter = parsed.adapter
    assert adapter is not None
    line = parsed.get("adapter")[-1].line
    path = expand_path(adapter, base_dir) if base_dir is not None else None
    if path is not None and path.exists():
        gguf = _find_gguf(path)
        ggufmeta.check_magic(gguf)
        return _ingest(store, gguf, "adapter", pins, False, progress)
    stored = _blob_digest(adapter)
    if stored is not None:
        size = _stored_gguf(store, stored, pins, "ADAPTER", line).stat().st_size
        return modelpack_layer("adapter", stored, size)
    if path is None:  # check_api_modelfile refuses this first; kept so no caller can skip the rule
        raise InvalidInputError(PATHS_REFUSED, "")
    raise ModelfileError(f"ADAPTER {adapter}: file not found ({path})", line)


def _layers(store: Store, parsed: mf.Modelfile, params: dict, base: ModelLayers, base_dir: Path | None, pins: Pins,
            progress: Progress) -> list[Descriptor]:
    """The new model's layers, in a fixed order: model, adapters, projectors, template, system, params,
    messages, licenses. What the Modelfile sets replaces the base model's layer of that role."""
    assert base.model is not None
    layers: list[Descriptor] = list(base.weights)  # the shards of a split GGUF, in order; else the one file
    if parsed.adapter is not None:
        layers.append(_adapter_layer(store, parsed, base_dir, pins, progress))
    else:
        layers += [_as_role(a, "adapter") for a in base.adapters]
    layers += [_as_role(p, "projector") for p in base.projectors]

    template = parsed.template
    if template is not None:
        layers.append(_text_layer(store, "template", template.encode(), pins))
    elif base.template is not None:
        layers.append(_as_role(base.template, "template"))
    system = parsed.system
    if system is not None:
        layers.append(_text_layer(store, "system", system.encode(), pins))
    elif base.system is not None:
        layers.append(_as_role(base.system, "system"))

    merged = _merge_params(store, base.params, params)
    if merged:
        layers.append(_text_layer(store, "params", go_json(merged), pins))
    messages = parsed.messages
    if messages:
        layers.append(_text_layer(store, "messages", go_json(messages), pins))
    elif base.messages is not None:
        layers.append(_as_role(base.messages, "messages"))
    layers += [_as_role(lic, "license") for lic in base.licenses]
    layers += [_text_layer(store, "license", text.encode(), pins) for text in parsed.licenses]
    if base.chat_template is not None:  # a Jinja template layer (from Docker Model Runner) is kept
        layers.append(_as_role(base.chat_template, "chat_template"))
    return layers


def _as_role(layer: Descriptor | None, role: str) -> Descriptor:
    """A base model's layer re-described in modelpkg's shape (same blob, whatever format it came from)."""
    assert layer is not None
    title = layer.title.rsplit("/", 1)[-1] if role == "projector" and layer.title else None  # mmproj-x.gguf kept
    return modelpack_layer(role, layer.digest, layer.size, title=title if title and title.lower().endswith(".gguf")
                           else None)


def _merge_params(store: Store, base: Descriptor | None, new: dict) -> dict:
    """Ollama's rule (server/create.go setParameters): new keys override, a new stop list replaces the
    old one, keys not set again are kept."""
    merged: dict = {}
    if base is not None:
        try:
            loaded = json.loads(store.read_blob(base.digest))
        except (ValueError, RecursionError) as e:  # RecursionError: arrays nested deeper than the stack
            raise InvalidInputError(f"the base model's parameters are not valid JSON: {e}") from e
        if isinstance(loaded, dict):
            merged.update(loaded)
    merged.update(new)
    return merged

