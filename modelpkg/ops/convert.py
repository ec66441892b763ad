"""``convert``: a stored model rebuilt in another manifest dialect (modelpack, ollama or docker).

The dialects themselves are pure (``modelpkg.core.formats``: layers, config and what each cannot carry); this
gathers what they need from the store: the GGUF's facts (for a model pulled as a KitOps tar, the GGUF derived
from it), the messages, parameters and chat template, and stores the new small blobs (config, Ollama's
messages, a chat template taken from the GGUF), pinned and unnamed. Used by ``push --format`` and by
``export_ollama``; the converted manifest's bytes are the caller's to send or write.

Orchestration: imports the core, the store and ``runtime.ggufmeta``; never the registry, the server or the CLI.
"""

from __future__ import annotations

from dataclasses import replace

from modelpkg.core import formats
from modelpkg.core import mediatypes as mt
from modelpkg.core.errors import InvalidInputError
from modelpkg.core.manifest import Descriptor, Manifest, load_json, model_layers
from modelpkg.runtime import ggufmeta
from modelpkg.store import Pins, RefEntry, Store


def convert(store: Store, entry: RefEntry, manifest: Manifest, format: str, pins: Pins) -> formats.Converted:
    """Build the model's ``format`` form; its new small blobs go into the store, pinned."""
    view = model_layers(manifest)
    if view.model is None:
        raise InvalidInputError(f"{entry.name} has no weights layer, so it cannot be pushed as {format}")
    weights = entry.local(view.model.digest)  # the GGUF itself, also for a model pulled as a KitOps tar
    if weights != view.model.digest:
        view = replace(view, model=Descriptor(mt.MODELPACK_WEIGHT, weights, store.blob_path(weights).stat().st_size))
    info = ggufmeta.read_info(store.blob_path(weights))
    facts = formats.ModelFacts(architecture=info.architecture, param_size=info.param_size,
                               quantization=info.file_type, weights_size=view.model.size,
                               context_length=info.context_length, gguf_metadata=info.metadata)
    if format == "ollama":
        messages = None
        if view.messages is not None:
            loaded = load_json(store.read_blob(view.messages.digest), "the model's messages")
            data = formats.ollama_messages(loaded if isinstance(loaded, list) else [])
            messages = Descriptor(mt.OLLAMA_MESSAGES, store.put_bytes(data, pins), len(data))
        converted = formats.to_ollama(view, facts, messages)
    elif format == "modelpack":
        converted = formats.to_modelpack(view, facts, info.name)
    else:
        params = load_json(store.read_blob(view.params.digest), "the model's parameters") if view.params else {}
        template = view.chat_template
        if template is None and info.chat_template:
            text = info.chat_template.encode("utf-8")
            template = Descriptor(mt.DMR_CHAT_TEMPLATE, store.put_bytes(text, pins), len(text))
        converted = formats.to_docker(view, facts, params=params if isinstance(params, dict) else {},
                                      chat_template=template, created=manifest.annotations.get(mt.CREATED))
    store.put_bytes(converted.config, pins)
    return converted
