"""Descriptors, manifests and indexes: parsing with limits, canonical serialisation, and the model view.

A manifest's digest is the sha256 of its exact bytes; ``parse_manifest`` reads bytes and keeps them
(``Manifest.raw``) so a fetched manifest is stored and re-sent as received, never re-serialised.
``to_bytes`` produces the canonical form (sorted keys, compact) for manifests modelpkg builds itself, so the
same inputs always give the same digest.

``model_layers`` classifies the layers of any supported format (modelpkg's ModelPack shape, Ollama's
``vnd.ollama.image.*`` layers, Docker Model Runner's ``vnd.docker.ai.*`` layers, KitOps ModelKits,
title-annotated ORAS artifacts) into roles: model, adapter, projector, template, system, params, messages,
license, chat_template (Jinja), tensor (safetensors weights: kept and shown, never run by llama.cpp). A GGUF
split into shards (``name-00001-of-00003.gguf``, llama.cpp's ``llama_split_path`` naming) is one model whose
weights are several layers, in shard order (``ModelLayers.shards``); the shards are told from projectors by
their titles (or, untitled, by all being Docker Model Runner GGUF layers).

Pure module: imports only ``modelpkg.core.errors``, ``modelpkg.core.digest`` and ``modelpkg.core.mediatypes``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # OCI distribution-spec: registries SHOULD accept at least 4 MB
MAX_LAYERS = 1000
MAX_BLOB_SIZE = 1 << 50  # 1 PiB: a declared size above this is a lie, not a model

ROLES = ("model", "adapter", "projector", "template", "system", "params", "messages", "license", "chat_template",
         "tensor")
GGUF = "gguf"
SAFETENSORS = "safetensors"
# llama.cpp's split naming (llama.cpp src/llama.cpp llama_split_path: "%s-%05d-of-%05d.gguf")
_SPLIT_FILE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

# Role -> (media type, file name) in modelpkg's ModelPack shape.
_MODELPACK_LAYER = {
    "model": (mt.MODELPACK_WEIGHT, "model.gguf"),
    "adapter": (mt.MODELPACK_WEIGHT, "adapter.gguf"),
    "projector": (mt.MODELPACK_WEIGHT, "projector.gguf"),
    "template": (mt.MODELPACK_WEIGHT_CONFIG, "template"),
    "system": (mt.MODELPACK_WEIGHT_CONFIG, "system.txt"),
    "params": (mt.MODELPACK_WEIGHT_CONFIG, "params.json"),
    "messages": (mt.MODELPACK_WEIGHT_CONFIG, "messages.json"),
    "license": (mt.MODELPACK_DOC, "LICENSE"),
    "chat_template": (mt.MODELPACK_WEIGHT_CONFIG, "chat_template.jinja"),  # Jinja, as DMR and HF ship it
}
_FILE_ROLES = {name: role for role, (_, name) in _MODELPACK_LAYER.items()}
_FILE_ROLES.update({"template.gotmpl": "template", "system": "system", "params": "params", "license": "license",
                    "license.txt": "license", "license.md": "license"})

_OLLAMA_ROLES = {
    mt.OLLAMA_MODEL: "model",
    mt.OLLAMA_ADAPTER: "adapter",
    mt.OLLAMA_PROJECTOR: "projector",
    mt.OLLAMA_TEMPLATE: "template",
    mt.OLLAMA_PROMPT: "template",
    mt.OLLAMA_SYSTEM: "system",
    mt.OLLAMA_PARAMS: "params",
    mt.OLLAMA_MESSAGES: "messages",
    mt.OLLAMA_LICENSE: "license",
    # Docker Model Runner (oci-model-artifacts.md 1.1)
    mt.DMR_GGUF: "model",
    mt.DMR_MMPROJ: "projector",
    mt.DMR_LICENSE: "license",
    mt.DMR_CHAT_TEMPLATE: "chat_template",
}


def split_name(name: str | None) -> tuple[str, int, int] | None:
    """``x/model-00002-of-00003.gguf`` -> ("model", 2, 3) (shard number from 1); None for any other name."""
    found = _SPLIT_FILE.match((name or "").rsplit("/", 1)[-1])
    if found is None:
        return None
    no, count = int(found["no"]), int(found["count"])
    return (found["prefix"], no, count) if 1 <= no <= count and count > 1 else None


def _base_type(media_type: str) -> str:
    """The media type without parameters (Ollama's tensor layers carry ``; name=...; dtype=...``), ModelPack's
    legacy ``vnd.cnai.model.`` names (modctl 0.2's) spelled as their ``vnd.cncf.model.`` equivalents."""
    base = media_type.split(";", 1)[0].strip()
    if base.startswith(mt.MODELPACK_LEGACY_PREFIX):
        return mt.MODELPACK_PREFIX + base[len(mt.MODELPACK_LEGACY_PREFIX):]
    return base


def _kitops_kind(media_type: str) -> str | None:
    """``application/vnd.kitops.modelkit.model.v1.tar+gzip`` -> ``model`` (None for other media types)."""
    if not media_type.startswith(mt.KITOPS_PREFIX):
        return None
    return media_type[len(mt.KITOPS_PREFIX):].split(".", 1)[0]


def is_kitops_tar(layer: Descriptor) -> bool:
    """A KitOps layer that may hold the GGUF (a tar, maybe gzipped): pull extracts it into its own blob."""
    return _kitops_kind(layer.media_type) in mt.KITOPS_MODEL_KINDS and ".tar" in layer.media_type


def kitops_projectors(manifest: Manifest, kitfile: Mapping[str, Any]) -> tuple[Descriptor, ...]:
    """A KitOps ModelKit's projector parts: its ``modelpart`` tars that the Kitfile (the config) lists under
    ``model.parts`` with ``type: projector``, titled with the part's file name (a part's type is in the
    Kitfile only, so ``layer_role`` cannot tell it)."""
    model = kitfile.get("model") if manifest.config.media_type == mt.KITOPS_CONFIG else None
    parts = model.get("parts") if isinstance(model, Mapping) else None
    named = {part.get("digest"): part.get("path") for part in parts or ()
             if isinstance(part, Mapping) and str(part.get("type", "")).lower() == "projector"}
    out = []
    for layer in manifest.layers:
        path = named.get(str(layer.digest))
        if _kitops_kind(layer.media_type) == "modelpart" and isinstance(path, str):
            out.append(Descriptor(layer.media_type, layer.digest, layer.size,
                                  {**layer.annotations, mt.TITLE: path.rstrip("/").rsplit("/", 1)[-1]}))
    return tuple(out)


def is_weight_tar(layer: Descriptor) -> bool:
    """A layer whose weights are inside a tar (KitOps's model tar, ModelPack's ``weight.v1.tar[+gzip|+zstd]``):
    pull streams the GGUF out of it into a blob of its own."""
    return is_kitops_tar(layer) or _base_type(layer.media_type).startswith(mt.MODELPACK_WEIGHT_TAR)


def _bad(what: str) -> InvalidInputError:
    return InvalidInputError(f"invalid manifest: {what}",
                             "the registry or file sent something that is not a valid OCI manifest")


def _string(obj: Mapping[str, Any], key: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise _bad(f"'{key}' must be a non-empty string")
    return value


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    value = obj.get("annotations") or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _bad("'annotations' must map strings to strings")
    return dict(value)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor. ``extra`` keeps fields modelpkg does not interpret (e.g. Ollama's ``from``)."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    platform: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        if not isinstance(obj, dict):
            raise _bad("a descriptor must be an object")
        size = obj.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_BLOB_SIZE:
            raise _bad(f"descriptor size {str(size)[:40]!r} is not a non-negative integer")
        digest_text = obj.get("digest")
        try:
            digest = Digest.parse(digest_text)
        except InvalidInputError as e:
            raise _bad(e.message) from e
        platform = obj.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise _bad("'platform' must be an object")
        known = {"mediaType", "digest", "size", "annotations", "artifactType", "platform"}
        return cls(
            media_type=_string(obj, "mediaType"),
            digest=digest,
            size=size,
            annotations=_annotations(obj),
            artifact_type=_string(obj, "artifactType", required=False),
            platform=platform,
            extra={k: v for k, v in obj.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = dict(self.platform)
        out.update(self.extra)
        return out

    @property
    def title(self) -> str | None:
        """The file name this layer carries, from ModelPack's filepath (or its legacy key) or the OCI title."""
        return (self.annotations.get(mt.MODELPACK_FILEPATH) or self.annotations.get(mt.MODELPACK_LEGACY_FILEPATH)
                or self.annotations.get(mt.TITLE))


@dataclass(frozen=True)
class Manifest:
    """An OCI image manifest or Docker v2 schema 2 manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        """The exact bytes: as received when parsed, else the canonical serialisation."""
        if self.raw is not None:
            return self.raw
        return canonical_json(self.to_json())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        return out

    @property
    def digest(self) -> Digest:
        return Digest.of(self.to_bytes())

    def blobs(self) -> list[Descriptor]:
        """The config and every layer: what must be present for the manifest to be whole."""
        return [self.config, *self.layers]

    def unique_blobs(self) -> list[Descriptor]:
        """``blobs()`` with each digest once (a manifest may list one blob twice): what a transfer moves."""
        seen: dict[Digest, Descriptor] = {}
        for blob in self.blobs():
            seen.setdefault(blob.digest, blob)
        return list(seen.values())


@dataclass(frozen=True)
class Index:
    """An OCI image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                               "manifests": [m.to_json() for m in self.manifests]}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return canonical_json(out)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_json(data: bytes, what: str, limit: int = MAX_MANIFEST_BYTES) -> Any:
    """Decode a small JSON document with a size cap; every failure is an ``InvalidInputError``."""
    if len(data) > limit:
        raise InvalidInputError(f"{what} is too large: {len(data)} bytes (the limit is {limit})")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidInputError(f"{what} is not valid JSON: {str(e)[:120]}") from e


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse manifest or index bytes, keeping them. ``media_type`` is the Content-Type, when known."""
    obj = load_json(data, "manifest")
    if not isinstance(obj, dict):
        raise _bad("the document is not a JSON object")
    if obj.get("schemaVersion") != 2:
        raise _bad(f"schemaVersion {str(obj.get('schemaVersion'))[:20]} is not supported (only 2)")
    declared = obj.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _bad("'mediaType' must be a string")
    if declared and media_type and media_type in (*mt.MANIFEST_TYPES, *mt.INDEX_TYPES) and declared != media_type:
        raise _bad(f"the content type {media_type} does not match the manifest's mediaType {declared}")
    kind = declared or media_type or (mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST)
    if kind in mt.INDEX_TYPES:
        entries = obj.get("manifests")
        if not isinstance(entries, list) or len(entries) > MAX_LAYERS:
            raise _bad(f"'manifests' must be a list of at most {MAX_LAYERS} entries")
        return Index(kind, tuple(Descriptor.from_json(e) for e in entries), _annotations(obj), raw=data)
    if kind not in mt.MANIFEST_TYPES:
        raise _bad(f"unsupported manifest media type {kind[:100]!r}")
    layers = obj.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise _bad(f"'layers' must be a list of at most {MAX_LAYERS} entries")
    subject = obj.get("subject")
    return Manifest(
        media_type=kind,
        config=Descriptor.from_json(obj.get("config")),
        layers=tuple(Descriptor.from_json(layer) for layer in layers),
        artifact_type=_string(obj, "artifactType", required=False),
        annotations=_annotations(obj),
        subject=Descriptor.from_json(subject) if subject is not None else None,
        raw=data,
    )


# ---------------------------------------------------------------------------------------------------------
# The model view: which layer plays which role, whatever the format.


@dataclass(frozen=True)
class ModelLayers:
    model: Descriptor | None
    adapters: tuple[Descriptor, ...] = ()
    projectors: tuple[Descriptor, ...] = ()
    template: Descriptor | None = None
    system: Descriptor | None = None
    params: Descriptor | None = None
    messages: Descriptor | None = None
    licenses: tuple[Descriptor, ...] = ()
    other: tuple[Descriptor, ...] = ()
    chat_template: Descriptor | None = None  # a Jinja chat template layer (DMR's), preferred to the GGUF's own
    # a split GGUF: every shard in order, ``model`` first; () for a model in one file
    shards: tuple[Descriptor, ...] = ()
    tensors: tuple[Descriptor, ...] = ()  # safetensors weights (Ollama's tensor layers, *.safetensors files)

    @property
    def weights(self) -> tuple[Descriptor, ...]:
        """The GGUF files llama.cpp loads, in order: the shards, or the one model layer."""
        return self.shards or ((self.model,) if self.model is not None else ())

    @property
    def format(self) -> str:
        """``gguf``, ``safetensors`` (weights llama.cpp cannot run), or "" for a model without weights."""
        if self.model is not None:
            return GGUF
        return SAFETENSORS if self.tensors else ""


def layer_role(layer: Descriptor) -> str | None:
    """The role of one layer, or None when modelpkg does not know what it is."""
    role = layer.annotations.get(mt.ROLE)
    if role in ROLES:
        return role
    if layer.media_type in _OLLAMA_ROLES:
        return _OLLAMA_ROLES[layer.media_type]
    title = (layer.title or "").rsplit("/", 1)[-1].lower()
    kind = _base_type(layer.media_type)
    if kind == mt.OLLAMA_TENSOR or title.endswith(".safetensors"):
        return "tensor"
    if _kitops_kind(layer.media_type) is not None:  # only the model tar has a role; pull derives its GGUF
        return "model" if _kitops_kind(layer.media_type) == "model" else None
    if title in _FILE_ROLES and (".tar" not in kind or _FILE_ROLES[title] == "model"):
        return _FILE_ROLES[title]  # a text file packed in a tar (modctl --raw=false's LICENSE) is not the text
    if title.endswith(".gguf") and "mmproj" in title:  # llama.cpp's mmproj-*.gguf, as HF repositories name them
        return "projector"
    if title.endswith(".gguf") or kind == mt.MODELPACK_WEIGHT or is_weight_tar(layer):
        return "model"
    return None


def model_layers(manifest: Manifest) -> ModelLayers:
    """Sort a manifest's layers into roles. The first model layer is the model; single-valued roles take
    the last layer of that role, as Ollama's "last one wins" does; licenses keep their order."""
    by_role: dict[str, list[Descriptor]] = {role: [] for role in ROLES}
    other: list[Descriptor] = []
    for layer in manifest.layers:
        role = layer_role(layer)
        (by_role[role] if role else other).append(layer)
    shards, rest = _split_shards(by_role["model"])
    models = [*shards[:1], *rest]
    return ModelLayers(
        model=models[0] if models else None,
        shards=tuple(shards) if len(shards) > 1 or (shards and split_name(shards[0].title)) else (),
        tensors=tuple(by_role["tensor"]),
        adapters=tuple(by_role["adapter"]),
        projectors=tuple(by_role["projector"]) + tuple(models[1:]),
        template=(by_role["template"] or [None])[-1],
        system=(by_role["system"] or [None])[-1],
        params=(by_role["params"] or [None])[-1],
        messages=(by_role["messages"] or [None])[-1],
        licenses=tuple(by_role["license"]),
        other=tuple(other),
        chat_template=(by_role["chat_template"] or [None])[-1],
    )


def _split_shards(models: list[Descriptor]) -> tuple[list[Descriptor], list[Descriptor]]:
    """(the shards of a split GGUF in shard order, the other model-role layers). The first model layer
    decides: titled as a shard, its shards are the layers titled with its prefix and count, ordered by number;
    untitled Docker Model Runner GGUF layers (DMR has a media type of its own for projectors) are shards in
    manifest order. Anything else is a projector, as before."""
    if len(models) < 2:
        return models, []
    first = split_name(models[0].title)
    if first is not None:
        same = [m for m in models if (split_name(m.title) or ("", 0, 0))[::2] == first[::2]]
        same.sort(key=lambda m: split_name(m.title)[1])
        return same, [m for m in models if m not in same]
    if all(m.media_type == mt.DMR_GGUF and m.title is None for m in models):
        return models, []
    return models[:1], models[1:]


def split_problem(view: ModelLayers) -> str | None:
    """What is wrong with a split model's shards (one missing, one twice, one of another set), or None."""
    if not view.shards:
        return None
    names = [split_name(s.title) for s in view.shards]
    if any(n is None for n in names):
        return None  # untitled shards: llama.cpp checks split.no and split.count when it loads them
    count = names[0][2]
    numbers = [n[1] for n in names]
    missing = sorted(set(range(1, count + 1)) - set(numbers))
    if missing:
        return f"shard {missing[0]} of {count} ({names[0][0]}-{missing[0]:05d}-of-{count:05d}.gguf) is missing"
    if len(numbers) != count:
        return f"it lists {len(numbers)} shards for a split of {count}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Building modelpkg's own manifests (ModelPack shape).


def modelpack_layer(role: str, digest: Digest, size: int, context_length: int | None = None,
                    title: str | None = None) -> Descriptor:
    """A layer descriptor for ``role`` in modelpkg's ModelPack shape, with title, filepath and role.

    The weights layer also records the GGUF's context length (ModelPack's config has no field for it), so
    ``show`` and ``run`` need not open the GGUF to learn it. ``title`` replaces the role's file name (a
    shard's ``model-00001-of-00002.gguf``, a projector's own name)."""
    media_type, filename = _MODELPACK_LAYER[role]
    filename = title or filename
    annotations = {mt.TITLE: filename, mt.MODELPACK_FILEPATH: filename, mt.ROLE: role}
    if context_length:
        annotations[mt.CONTEXT_LENGTH] = str(context_length)
    return Descriptor(media_type, digest, size, annotations)


def modelpack_config(*, architecture: str, param_size: str, quantization: str, name: str,
                     diff_ids: list[Digest]) -> bytes:
    """A ModelPack config (schema/config-schema.json allows no extra fields, so nothing else goes in)."""
    config = {k: v for k, v in {"architecture": architecture, "format": "gguf", "paramSize": param_size,
                                "quantization": quantization}.items() if v}
    return canonical_json({
        "descriptor": {"name": name} if name else {},
        "config": config,
        "modelfs": {"type": "layers", "diffIds": [str(d) for d in diff_ids]},
    })


def modelpack_manifest(config: Descriptor, layers: list[Descriptor], annotations: Mapping[str, str]) -> Manifest:
    return Manifest(
        media_type=mt.OCI_MANIFEST,
        artifact_type=mt.MODELPACK_ARTIFACT,
        config=config,
        layers=tuple(layers),
        annotations=dict(annotations),
    )


# ---------------------------------------------------------------------------------------------------------
# Go-compatible JSON, so params and messages blobs hash the same as Ollama's (server/create.go writes them
# with json.NewEncoder: sorted map keys, compact, HTML escaping, trailing newline).


def go_json(obj: Any) -> bytes:
    """Encode like Go's ``json.Encoder.Encode``: compact, map keys sorted, ``<>&`` escaped, trailing newline."""
    text = _go_encode(obj)
    return (text + "\n").encode("utf-8")


def _go_encode(obj: Any) -> str:
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return json.dumps(obj)
    if isinstance(obj, float):
        return _go_float(obj)
    if isinstance(obj, str):
        text = json.dumps(obj, ensure_ascii=False)
        for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                             ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            text = text.replace(char, escape)
        return text
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_go_encode(v) for v in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{_go_encode(str(k))}:{_go_encode(obj[k])}" for k in sorted(obj)) + "}"
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _go_float(value: float) -> str:
    """Go's float formatting in encoding/json: the shortest digits that round-trip, positional between
    1e-6 and 1e21, exponent form outside (with at least two exponent digits, as Go writes ``1e-07``)."""
    if math.isnan(value) or math.isinf(value):
        raise InvalidInputError(f"the number {value} cannot be stored in JSON")
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    shortest = repr(value)
    if 1e-6 <= abs(value) < 1e21:
        return format(Decimal(shortest), "f")
    mantissa, _, exponent = shortest.partition("e")
    sign, digits = (exponent[0], exponent[1:]) if exponent[0] in "+-" else ("+", exponent)
    return f"{mantissa}e{sign}{int(digits):02d}"
