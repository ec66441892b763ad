"""Other tools' model-artifact dialects: build Ollama's and Docker Model Runner's manifests and configs from
a model in the store, byte for byte as those tools write them.

- **ollama** (ollama-behaviour.md section 2): a Docker v2 manifest whose config is Ollama's ``ConfigV2``
  (``application/vnd.docker.container.image.v1+json``) and whose layers are ``vnd.ollama.image.*``, in the
  order ``createModel`` writes them (model, adapters, projectors, template, system, licenses, params,
  messages). JSON is written as Go writes it: struct fields in declaration order (``json.Encoder`` for the
  config, with its trailing newline; ``json.Marshal`` for the pushed manifest, without one), maps sorted,
  ``<>&`` escaped. The template, system, params and license blobs modelpkg stores are already Ollama's
  bytes, so they are reused as they are; messages are re-encoded in Ollama's field order (role, content).
- **docker** (oci-model-artifacts.md section 1.1; docker/model-runner ``types.ConfigFile``): an OCI
  manifest with config ``application/vnd.docker.ai.model.config.v0.1+json`` (format, quantization,
  parameters, architecture, size, gguf metadata, context_size) and layers ``vnd.docker.ai.gguf.v3``,
  ``.mmproj``, ``.license`` and ``.chat.template.jinja``. It has no place for a Go template, a system
  prompt, parameters other than the context size, messages or LoRA adapters: ``Converted.dropped`` names
  what was left out, and a model with an adapter is refused rather than pushed without it.
- **modelpack**: modelpkg's own shape (``manifest.modelpack_manifest``), what ``create`` writes. A model
  pulled in another dialect is rebuilt in it (same blobs, ModelPack descriptors and config).

Without a format, push sends the stored manifest as it is (a mirror keeps digests and signatures valid).

Reading all of these (and KitOps ModelKits) is ``manifest.layer_role``'s job.

Pure module: imports only ``modelpkg.core.errors``, ``modelpkg.core.digest``, ``modelpkg.core.manifest`` and
``modelpkg.core.mediatypes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError, UsageError
from modelpkg.core.manifest import (
    Descriptor,
    Manifest,
    ModelLayers,
    go_json,
    modelpack_config,
    modelpack_layer,
    modelpack_manifest,
)

FORMATS = ("modelpack", "ollama", "docker")
DMR_MAX_ARRAY = 50  # DMR drops GGUF arrays longer than this from config.gguf (format/gguf.go maxArraySize)

# Ollama's api.Message field order (role, content, then the omitempty fields)
_MESSAGE_FIELDS = ("role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id")


@dataclass(frozen=True)
class ModelFacts:
    """What the configs of other formats say about the weights (read from the GGUF by the caller)."""

    architecture: str
    param_size: str          # human count, "268.10M"
    quantization: str        # "Q4_K_M"
    weights_size: int        # bytes of the model layer
    context_length: int | None = None
    gguf_metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Converted:
    """A model in another format: its config blob, its manifest, and what the format could not carry."""

    config: bytes
    manifest: Manifest
    dropped: tuple[str, ...] = ()

    @property
    def manifest_bytes(self) -> bytes:
        return self.manifest.to_bytes()


def is_modelpack(manifest: Manifest) -> bool:
    return manifest.artifact_type == mt.MODELPACK_ARTIFACT or manifest.config.media_type == mt.MODELPACK_CONFIG


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise UsageError(f"unknown format {name!r}", f"use one of: {', '.join(FORMATS)}")
    return name


# ---------------------------------------------------------------------------------------------------------
# Go-style JSON of structs: fields in declaration order (maps inside are sorted by go_json)


def go_struct(fields: Sequence[tuple[str, Any]], newline: bool = False) -> bytes:
    """Encode ``fields`` as a Go struct is encoded: in this order, compact, with Go's string escaping."""
    body = ",".join(f"{_go(name)}:{_go(value)}" for name, value in fields)
    return ("{" + body + "}" + ("\n" if newline else "")).encode("utf-8")


def _go(value: Any) -> str:
    if isinstance(value, RawJSON):
        return value.text
    return go_json(value).decode("utf-8")[:-1]


@dataclass(frozen=True)
class RawJSON:
    """Already-encoded JSON to embed as it is (a nested struct)."""

    text: str


def _descriptor_struct(d: Descriptor) -> RawJSON:
    # manifest.Layer: mediaType, digest, size, then from/name (omitempty, never written by modelpkg)
    return RawJSON(go_struct([("mediaType", d.media_type), ("digest", str(d.digest)), ("size", d.size)]).decode())


# ---------------------------------------------------------------------------------------------------------
# Ollama


def ollama_config(facts: ModelFacts) -> bytes:
    """Ollama's ConfigV2 as ``createConfigLayer`` writes it for a GGUF model (json.Encoder: trailing newline)."""
    families = [facts.architecture] if facts.architecture else None
    return go_struct([
        ("model_format", "gguf"),
        ("model_family", facts.architecture),
        ("model_families", families),
        ("model_type", facts.param_size),
        ("file_type", facts.quantization),
        ("architecture", "amd64"),  # "required by spec", always amd64/linux in Ollama
        ("os", "linux"),
    ], newline=True)


def ollama_messages(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """A messages layer as Ollama's create writes it: api.Message fields in struct order, json.Encoder."""
    out = []
    for m in messages:
        fields = [("role", str(m.get("role", ""))), ("content", str(m.get("content", "")))]
        fields += [(k, m[k]) for k in _MESSAGE_FIELDS[2:] if m.get(k)]
        out.append(go_struct(fields).decode())
    return ("[" + ",".join(out) + "]\n").encode("utf-8")


def ollama_manifest(config: Descriptor, layers: Sequence[Descriptor]) -> Manifest:
    """The manifest Ollama's push sends (json.Marshal of manifest.Manifest: struct order, no newline)."""
    config = Descriptor(mt.DOCKER_CONFIG, config.digest, config.size)
    layers = tuple(Descriptor(d.media_type, d.digest, d.size) for d in layers)
    raw = go_struct([
        ("schemaVersion", 2),
        ("mediaType", mt.DOCKER_MANIFEST),
        ("config", _descriptor_struct(config)),
        ("layers", RawJSON("[" + ",".join(_descriptor_struct(d).text for d in layers) + "]")),
    ])
    return Manifest(mt.DOCKER_MANIFEST, config, layers, raw=raw)


def to_ollama(view: ModelLayers, facts: ModelFacts, messages: Descriptor | None = None) -> Converted:
    """Ollama's form of a model. ``messages`` is the messages layer re-encoded by ``ollama_messages``
    (the caller stores it); the other blobs are the model's own."""
    if view.model is None:
        raise InvalidInputError("the model has no weights layer, so it has no Ollama form")
    if view.shards:
        raise InvalidInputError(f"Ollama's format has no place for a split GGUF ({len(view.shards)} shards)",
                                "push this model with --format modelpack or --format docker")
    config = ollama_config(facts)
    layers: list[Descriptor] = [_as(view.model, mt.OLLAMA_MODEL)]
    layers += [_as(a, mt.OLLAMA_ADAPTER) for a in view.adapters]
    layers += [_as(p, mt.OLLAMA_PROJECTOR) for p in view.projectors]
    if view.template is not None:
        layers.append(_as(view.template, mt.OLLAMA_TEMPLATE))
    if view.system is not None:
        layers.append(_as(view.system, mt.OLLAMA_SYSTEM))
    layers += [_as(lic, mt.OLLAMA_LICENSE) for lic in view.licenses]
    if view.params is not None:
        layers.append(_as(view.params, mt.OLLAMA_PARAMS))
    messages = messages or view.messages
    if messages is not None:
        layers.append(_as(messages, mt.OLLAMA_MESSAGES))
    config_desc = Descriptor(mt.DOCKER_CONFIG, Digest.of(config), len(config))
    dropped = ("the Jinja chat template (Ollama uses the GGUF's own)",) if view.chat_template else ()
    return Converted(config, ollama_manifest(config_desc, layers), dropped)


def _as(d: Descriptor, media_type: str, annotations: Mapping[str, str] | None = None) -> Descriptor:
    return Descriptor(media_type, d.digest, d.size, dict(annotations or {}))


# ---------------------------------------------------------------------------------------------------------
# Docker Model Runner


def human_size(n: int) -> str:
    """gguf-parser-go's IEC size string without the space, as DMR's config carries it ("256.35MiB")."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)}B" if unit == "B" else f"{value:.2f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def dmr_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """GGUF key/values as strings, arrays longer than ``DMR_MAX_ARRAY`` left out, as DMR's config has them."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(value, (list, tuple)):
            if len(value) > DMR_MAX_ARRAY:
                continue
            out[key] = "[" + " ".join(str(v) for v in value) + "]"
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            out[key] = str(value)
    return out


def dmr_config(facts: ModelFacts, diff_ids: Sequence[Digest], context_size: int | None = None,
               created: str | None = None) -> bytes:
    """DMR's ``types.ConfigFile`` (config, descriptor, rootfs), struct order as the Go encoder writes it."""
    inner: list[tuple[str, Any]] = [("format", "gguf")]
    for name, value in (("quantization", facts.quantization), ("parameters", facts.param_size),
                        ("architecture", facts.architecture), ("size", human_size(facts.weights_size))):
        if value:
            inner.append((name, value))
    metadata = dmr_metadata(facts.gguf_metadata)
    if metadata:
        inner.append(("gguf", metadata))
    if context_size:
        inner.append(("context_size", int(context_size)))
    fields: list[tuple[str, Any]] = [("config", RawJSON(go_struct(inner).decode()))]
    if created:
        fields.append(("descriptor", RawJSON(go_struct([("created", created)]).decode())))
    fields.append(("rootfs", RawJSON(go_struct([("type", "rootfs"),
                                                 ("diff_ids", [str(d) for d in diff_ids])]).decode())))
    return go_struct(fields)


def to_docker(view: ModelLayers, facts: ModelFacts, *, params: Mapping[str, Any] | None = None,
              chat_template: Descriptor | None = None, created: str | None = None) -> Converted:
    """Docker Model Runner's form of a model. ``chat_template`` is the Jinja template layer to carry (the
    model's own Jinja layer, or the GGUF's ``tokenizer.chat_template`` stored by the caller)."""
    if view.model is None:
        raise InvalidInputError("the model has no weights layer, so it has no Docker Model Runner form")
    if view.adapters:
        raise InvalidInputError("Docker Model Runner's format has no place for a LoRA adapter",
                                "push this model with --format modelpack or --format ollama")
    layers = [_as(w, mt.DMR_GGUF, {mt.MODELPACK_FILEPATH: w.title if view.shards and w.title else "model.gguf"})
              for w in view.weights]  # a split GGUF: each shard, under its own name (as docker model package)
    layers += [_as(p, mt.DMR_MMPROJ, {mt.MODELPACK_FILEPATH: f"mmproj-{i}.gguf" if i else "mmproj.gguf"})
               for i, p in enumerate(view.projectors)]
    layers += [_as(lic, mt.DMR_LICENSE, {mt.MODELPACK_FILEPATH: f"LICENSE-{i}" if i else "LICENSE"})
               for i, lic in enumerate(view.licenses)]
    chat_template = chat_template or view.chat_template
    if chat_template is not None:
        layers.append(_as(chat_template, mt.DMR_CHAT_TEMPLATE, {mt.MODELPACK_FILEPATH: "template.jinja"}))
    params = dict(params or {})
    context_size = params.pop("num_ctx", None)
    if not isinstance(context_size, int) or isinstance(context_size, bool):
        context_size = None
    config = dmr_config(facts, [d.digest for d in layers], context_size, created)
    config_desc = Descriptor(mt.DMR_CONFIG, Digest.of(config), len(config))
    dropped = [what for what, present in (
        ("the Go TEMPLATE", view.template is not None),
        ("the SYSTEM prompt", view.system is not None),
        ("PARAMETERs " + ", ".join(sorted(params)), bool(params)),
        ("MESSAGEs", view.messages is not None),
    ) if present]
    manifest = Manifest(mt.OCI_MANIFEST, config_desc, tuple(layers))  # no artifactType in DMR's own format
    return Converted(config, manifest, tuple(dropped))


# ---------------------------------------------------------------------------------------------------------
# ModelPack (for a model that arrived in another dialect)


def to_modelpack(view: ModelLayers, facts: ModelFacts, name: str = "") -> Converted:
    """modelpkg's ModelPack form of a model, in ``create``'s layer order; every layer is the same blob."""
    if view.model is None:
        raise InvalidInputError("the model has no weights layer, so it has no ModelPack form")
    layers = [modelpack_layer("model", w.digest, w.size, facts.context_length if n == 0 else None,
                              title=w.title if view.shards else None) for n, w in enumerate(view.weights)]
    layers += [modelpack_layer("adapter", d.digest, d.size) for d in view.adapters]
    layers += [modelpack_layer("projector", d.digest, d.size,
                               title=d.title.rsplit("/", 1)[-1] if d.title and d.title.endswith(".gguf") else None)
               for d in view.projectors]
    for role in ("template", "system", "params", "messages"):
        d = getattr(view, role)
        if d is not None:
            layers.append(modelpack_layer(role, d.digest, d.size))
    layers += [modelpack_layer("license", d.digest, d.size) for d in view.licenses]
    if view.chat_template is not None:
        layers.append(modelpack_layer("chat_template", view.chat_template.digest, view.chat_template.size))
    config = modelpack_config(architecture=facts.architecture, param_size=facts.param_size,
                              quantization=facts.quantization, name=name, diff_ids=[d.digest for d in layers])
    config_desc = Descriptor(mt.MODELPACK_CONFIG, Digest.of(config), len(config))
    return Converted(config, modelpack_manifest(config_desc, layers, {mt.FORMAT_VERSION: "1"}))
