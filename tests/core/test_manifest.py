"""Manifests: parsing with limits, exact bytes kept, roles in every format, Go-compatible JSON."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError, ModelpkgError
from modelpkg.core.manifest import Index, Manifest, go_json, model_layers, parse_manifest

D = "sha256:" + "a" * 64


def _manifest(layers, **extra):
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                       "config": {"mediaType": mt.OCI_EMPTY, "digest": D, "size": 2}, "layers": layers,
                       **extra}).encode()


def test_bytes_are_kept_as_received():
    raw = b'{ "schemaVersion":2, "mediaType":"%s","config":{"mediaType":"x","digest":"%s","size":2},"layers":[]}' % (
        mt.OCI_MANIFEST.encode(), D.encode())
    parsed = parse_manifest(raw)
    assert parsed.to_bytes() == raw and parsed.digest == Digest.of(raw)


def test_ollama_manifest_roles():
    layers = [{"mediaType": t, "digest": "sha256:" + c * 64, "size": 1} for t, c in [
        (mt.OLLAMA_MODEL, "1"), (mt.OLLAMA_TEMPLATE, "2"), (mt.OLLAMA_SYSTEM, "3"), (mt.OLLAMA_PARAMS, "4"),
        (mt.OLLAMA_LICENSE, "5"), (mt.OLLAMA_LICENSE, "6"), (mt.OLLAMA_MESSAGES, "7"), (mt.OLLAMA_ADAPTER, "8")]]
    raw = json.dumps({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
                      "config": {"mediaType": mt.DOCKER_CONFIG, "digest": D, "size": 2}, "layers": layers}).encode()
    roles = model_layers(parse_manifest(raw))
    assert roles.model.digest.hex == "1" * 64 and roles.template.digest.hex == "2" * 64
    assert [lic.digest.hex[0] for lic in roles.licenses] == ["5", "6"]
    assert roles.adapters[0].digest.hex == "8" * 64 and roles.messages.digest.hex == "7" * 64


def test_oras_artifact_with_a_gguf_title_is_a_model():
    raw = _manifest([{"mediaType": "application/octet-stream", "digest": D, "size": 3,
                      "annotations": {mt.TITLE: "weights/Model-Q4.GGUF"}}])
    assert model_layers(parse_manifest(raw)).model is not None


def test_index_parses():
    raw = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": D, "size": 10, "platform": {"os": "linux", "architecture": "amd64"}}]})
    assert isinstance(parse_manifest(raw.encode()), Index)


@pytest.mark.parametrize("raw, fragment", [
    (b"x" * (4 * 1024 * 1024 + 1), "too large"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (b"[]", "not a JSON object"),
    (_manifest([{"mediaType": "x", "digest": D, "size": -1}]), "non-negative"),
    (_manifest([{"mediaType": "x", "digest": D, "size": True}]), "non-negative"),
    (_manifest([{"mediaType": "x", "digest": "sha512:" + "a" * 128, "size": 1}]), "unsupported digest algorithm"),
    (_manifest([{"mediaType": "x", "digest": D, "size": 1}] * 1001), "at most 1000"),
    (_manifest([], schemaVersion=1), "schemaVersion"),
    (_manifest([{"mediaType": "x", "digest": D, "size": 1, "annotations": {"a": 1}}]), "annotations"),
])
def test_hostile_manifests_are_refused(raw, fragment):
    with pytest.raises(InvalidInputError) as info:
        parse_manifest(raw)
    assert fragment in info.value.message


def test_content_type_must_match_media_type():
    with pytest.raises(InvalidInputError, match="does not match"):
        parse_manifest(_manifest([]), mt.DOCKER_MANIFEST)


@settings(max_examples=2000, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                    max_leaves=30))
def test_fuzz_manifest_reader_raises_only_modelpkg_errors(obj):
    for candidate in (obj, {"schemaVersion": 2, "config": obj, "layers": [obj]},
                      {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [obj]}):
        try:
            parsed = parse_manifest(json.dumps(candidate).encode())
        except ModelpkgError:
            continue
        if isinstance(parsed, Manifest):
            model_layers(parsed)


def test_go_json_matches_ollama_params_digest():
    params = {"num_ctx": 4096, "stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7, "top_p": 0.9,
              "use_mmap": True}
    data = go_json(params)
    assert data == (b'{"num_ctx":4096,"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"],'
                    b'"temperature":0.7,"top_p":0.9,"use_mmap":true}\n')
    # the digest Ollama's own create gives for these inputs (shared/reference/ollama-behaviour.md 2.4)
    assert hashlib.sha256(data).hexdigest() == "3002203173f8432a2eef63c232cfafd2a44eec608de9a9321eded63d0aebb8eb"


@pytest.mark.parametrize("value, text", [(1.0, "1"), (0.00001, "0.00001"), (1e-7, "1e-07"), (1e21, "1e+21"),
                                         (0.1, "0.1"), (-2.5, "-2.5")])
def test_go_float_format(value, text):
    assert go_json(value) == (text + "\n").encode()
