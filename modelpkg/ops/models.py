"""Reading and managing the models in a store: list, describe (show), remove, copy.

``describe`` says what the weights are whatever their layout: one GGUF, a split GGUF (``shard_paths``, in
order), a GGUF inside a tar (its derived blob), or safetensors (``weight_format``; no ``model_path``: llama.cpp
runs GGUF only); projectors are listed with their file names.

Orchestration over the store: imports the core and ``store``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpkg.core import mediatypes as mt
from modelpkg.core import modelfile as mf
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError, NotFoundError
from modelpkg.core.manifest import (
    GGUF,
    SAFETENSORS,
    Descriptor,
    Manifest,
    is_weight_tar,
    kitops_projectors,
    load_json,
    model_layers,
)
from modelpkg.core.reference import Reference
from modelpkg.store import GCPlan, RefEntry, Store


@dataclass(frozen=True)
class ModelSummary:
    name: str
    digest: Digest
    size: int
    modified: float


@dataclass(frozen=True)
class ModelDetails:
    """Everything ``show`` prints, read from the manifest, its config and its small layers."""

    name: str
    digest: Digest
    manifest: Manifest
    config: dict[str, Any]
    architecture: str
    parameters_size: str
    quantization: str
    context_length: int | None
    parameters: dict[str, Any]
    template: str | None
    system: str | None
    licenses: tuple[str, ...]
    messages: tuple[dict, ...]
    model_path: Path | None
    adapter_paths: tuple[Path, ...] = field(default_factory=tuple)
    modelfile_text: str | None = None
    chat_template: str | None = None  # a Jinja chat template layer (Docker Model Runner's); run prefers it
    weight_format: str = GGUF  # "gguf", "safetensors" (kept and shown; llama.cpp cannot run it) or ""
    shard_paths: tuple[Path, ...] = ()  # a split GGUF: every shard's blob in order (model_path is the first)

    @property
    def shards(self) -> tuple[Descriptor, ...]:
        return model_layers(self.manifest).shards

    @property
    def projectors(self) -> tuple[Descriptor, ...]:
        return model_layers(self.manifest).projectors + kitops_projectors(self.manifest, self.config)

    @property
    def size(self) -> int:
        return sum(d.size for d in self.manifest.blobs()) + len(self.manifest.to_bytes())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": str(self.digest),
            "size": self.size,
            "architecture": self.architecture,
            "parameter_size": self.parameters_size,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "config": self.config,
            "layers": [layer.to_json() for layer in self.manifest.layers],
            "parameters": self.parameters,
            "template": self.template,
            "system": self.system,
            "license": "\n\n".join(self.licenses) if self.licenses else None,
            "licenses": list(self.licenses),
            "messages": list(self.messages),
            "model_path": str(self.model_path) if self.model_path else None,
            "chat_template": self.chat_template,
            "format": self.weight_format,
            "shards": [_file_json(d) for d in self.shards],
            "projectors": [_file_json(d) for d in self.projectors],
        }


def _file_json(d: Descriptor) -> dict[str, Any]:
    return {"title": d.title, "digest": str(d.digest), "size": d.size}


def list_models(store: Store, short) -> list[ModelSummary]:
    """Every name in the store, with the total size of its blobs. ``short`` maps a full name to its display form."""
    out = []
    for entry in store.refs():
        size = entry.size
        try:
            _, manifest = store.manifest(_ref_of(entry))
            size += sum(d.size for d in manifest.blobs())
        except Exception:  # noqa: BLE001 - list still shows a model whose manifest is damaged
            pass
        out.append(ModelSummary(short(entry.name), entry.digest, size, entry.modified))
    return sorted(out, key=lambda m: m.name)


def _ref_of(entry: RefEntry) -> Reference:
    from modelpkg.core.reference import parse_reference

    return parse_reference(entry.name)


def describe(store: Store, ref: Reference) -> ModelDetails:
    entry, manifest = store.manifest(ref)
    layers = model_layers(manifest)
    config = _json_blob(store, manifest.config, "config")
    params = _json_blob(store, layers.params, "parameters") if layers.params else {}
    messages = _json_blob(store, layers.messages, "messages") if layers.messages else []
    info = _config_info(config)
    weights = entry.local(layers.model.digest) if layers.model else None  # a KitOps tar's GGUF, say
    weight_format = layers.format
    if layers.model is not None and weights == layers.model.digest and is_weight_tar(layers.model):
        weights, weight_format = None, SAFETENSORS  # a tar pull found no GGUF in: it held safetensors
    if not weight_format and _config_format(config) == SAFETENSORS:
        weight_format = SAFETENSORS
    context = info.get("context_length") or _annotated_int(layers.model, mt.CONTEXT_LENGTH)
    if (not context or not info.get("architecture")) and weights is not None and store.has_blob(weights):
        # a model pulled from elsewhere (ORAS, KitOps) whose config says nothing about the weights
        gguf = _gguf_info(store.blob_path(weights))
        context = context or gguf.pop("context_length", None)
        info = {**gguf, **{k: v for k, v in info.items() if v}}
    return ModelDetails(
        name=entry.name,
        digest=entry.digest,
        manifest=manifest,
        config=config if isinstance(config, dict) else {},
        architecture=info.get("architecture", ""),
        parameters_size=info.get("param_size", ""),
        quantization=info.get("quantization", ""),
        context_length=context,
        parameters=params if isinstance(params, dict) else {},
        template=_text_blob(store, layers.template),
        system=_text_blob(store, layers.system),
        licenses=tuple(_text_blob(store, lic) or "" for lic in layers.licenses),
        messages=tuple(m for m in messages if isinstance(m, dict)) if isinstance(messages, list) else (),
        model_path=store.blob_path(weights) if weights else None,
        adapter_paths=tuple(store.blob_path(a.digest) for a in layers.adapters),
        modelfile_text=manifest.annotations.get(mt.MODELFILE),
        chat_template=_text_blob(store, layers.chat_template),
        weight_format=weight_format,
        shard_paths=tuple(store.blob_path(s.digest) for s in layers.shards),
    )


def _config_format(config: Any) -> str:
    """The weights' format as the config gives it: ModelPack's ``config.format``, Ollama's ``model_format``."""
    if not isinstance(config, dict):
        return ""
    inner = config.get("config")
    value = inner.get("format") if isinstance(inner, dict) else config.get("model_format")
    return value.lower() if isinstance(value, str) else ""


def _json_blob(store: Store, desc: Descriptor | None, what: str) -> Any:
    if desc is None:
        return {}
    return load_json(store.read_blob(desc.digest), f"the model's {what}")


def _text_blob(store: Store, desc: Descriptor | None) -> str | None:
    if desc is None:
        return None
    try:
        return store.read_blob(desc.digest).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"layer {desc.digest} is not UTF-8 text") from e


def _config_info(config: Any) -> dict[str, Any]:
    """Architecture, size and quantization from a ModelPack config or Ollama's ConfigV2."""
    if not isinstance(config, dict):
        return {}
    inner = config.get("config")
    if isinstance(inner, dict):  # ModelPack ("paramSize") or Docker Model Runner ("parameters")
        return {"architecture": inner.get("architecture", ""),
                "param_size": inner.get("paramSize") or inner.get("parameters") or "",
                "quantization": inner.get("quantization", "")}
    return {"architecture": config.get("model_family", ""), "param_size": config.get("model_type", ""),
            "quantization": config.get("file_type", ""), "context_length": config.get("context_length")}


def _annotated_int(layer: Descriptor | None, key: str) -> int | None:
    value = layer.annotations.get(key, "") if layer is not None else ""
    return int(value) if value.isascii() and value.isdigit() else None  # not "²", which isdigit() but int() refuses


def _gguf_info(path: Path) -> dict[str, Any]:
    from modelpkg.runtime import ggufmeta

    try:
        info = ggufmeta.read_info(path)
    except Exception:  # noqa: BLE001 - show still works when the weights cannot be read
        return {}
    return {"architecture": info.architecture, "param_size": info.param_size, "quantization": info.file_type,
            "context_length": info.context_length}


def modelfile_for(details: ModelDetails, short_name: str) -> str:
    """A Modelfile that recreates the model (``show --modelfile``), in Ollama's layout."""
    instructions: list[mf.Instruction] = []
    if details.model_path is not None:
        instructions.append(mf.Instruction("from", str(details.model_path)))
    instructions += [mf.Instruction("adapter", str(p)) for p in details.adapter_paths]
    if details.template is not None:
        instructions.append(mf.Instruction("template", details.template))
    if details.system is not None:
        instructions.append(mf.Instruction("system", details.system))
    for name in sorted(details.parameters):
        value = details.parameters[name]
        for item in value if isinstance(value, list) else [value]:
            instructions.append(mf.Instruction("parameter", mf.format_parameter_value(item), name))
    instructions += [mf.Instruction("license", text) for text in details.licenses]
    instructions += [mf.Instruction("message", str(m.get("content", "")), str(m.get("role", "")))
                     for m in details.messages]
    header = (f'# Modelfile generated by "modelpkg show"\n'
              f"# To build a new Modelfile based on this, replace FROM with:\n"
              f"# FROM {short_name}\n\n")
    return header + mf.format(mf.Modelfile(tuple(instructions)))


def remove(store: Store, refs: list[Reference]) -> tuple[list[RefEntry], GCPlan]:
    """Remove names, then delete the blobs that only they used (as ``ollama rm`` does)."""
    for ref in refs:
        store.resolve(ref)  # every name must exist before anything is removed
    candidates: set[Digest] = set()
    for ref in refs:
        entry, manifest = store.manifest(ref)
        candidates |= {entry.digest, *(d.digest for d in manifest.blobs()), *(made for _, made in entry.derived)}
    removed = store.remove_refs([_exact(store, r) for r in refs])
    return removed, store.sweep(candidates)


def _exact(store: Store, ref: Reference) -> Reference:
    from modelpkg.core.reference import parse_reference

    return parse_reference(store.resolve(ref).name)


def copy(store: Store, src: Reference, dst: Reference) -> RefEntry:
    """Give a model a second name (the blobs are shared, as ``ollama cp`` does)."""
    entry = store.resolve(src)
    with store.session() as pins:
        pins.add(entry.digest)
        if not store.has_blob(entry.digest):
            raise NotFoundError(f"the manifest of {src} is missing from the store", "run 'modelpkg verify'")
        return store.set_ref(dst, entry.digest, entry.media_type, entry.size, entry.attached, entry.derived,
                             index=entry.index)
