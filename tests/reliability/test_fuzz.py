"""Fuzzing the readers of hostile input: only ever a ModelpkgError, never another exception, never a hang.

Complements the property tests next to each parser (tests/core/test_modelfile.py, test_reference.py,
test_manifest.py, test_gotemplate.py, test_prompt.py): here are the readers those do not reach: the config,
parameters and messages a stored model carries (``models.describe``), the credentials files, the trust policy
and mirrors TOML, the ``WWW-Authenticate`` challenge parser, the token service's answer, the registry's error
bodies, the archive reader (``load``) and the KitOps tar extraction on arbitrary tars, and the template
renderer on arbitrary conversations. Each example must also finish within ``PER_EXAMPLE_SECONDS``.

``MODELPKG_FUZZ_EXAMPLES=<n>`` scales every property's example count by n (default 1).
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpkg.core import mediatypes as mt
from modelpkg.core import prompt
from modelpkg.core.errors import ModelpkgError
from modelpkg.core.gotemplate import MAX_OUTPUT
from modelpkg.core.manifest import Descriptor, Manifest, canonical_json, model_layers, parse_manifest
from modelpkg.core.reference import parse_reference
from modelpkg.core.signing import parse_policy
from modelpkg.ops import interop
from modelpkg.ops.kitops import extract_gguf
from modelpkg.ops.models import describe
from modelpkg.registry import auth, credentials
from modelpkg.registry.mirrors import parse_config
from modelpkg.store import Store

SCALE = max(1, int(os.environ.get("MODELPKG_FUZZ_EXAMPLES", "1") or 1))
PER_EXAMPLE_SECONDS = 2.0


def fuzz(n: int):
    """Hypothesis settings for a fuzz property: ``n`` examples (times the scale), no per-example deadline
    (the wall-time guard below is ours, and looser), no health check about slow data generation."""
    return settings(max_examples=n * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@contextmanager
def only_modelpkg_errors():
    """The body may raise a ModelpkgError with a one-line message, nothing else, and must be quick."""
    start = time.monotonic()
    try:
        yield
    except ModelpkgError as e:
        assert "\n" not in e.message, e.message
    elapsed = time.monotonic() - start
    assert elapsed < PER_EXAMPLE_SECONDS, f"one example took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------------------
# JSON and TOML values

JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
                | st.floats(allow_nan=False) | st.text(max_size=12))
JSON = st.recursive(JSON_SCALARS,
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20)
DEEP = (st.integers(1, 5000).map(lambda n: "[" * n + "]" * n)
        | st.integers(1, 5000).map(lambda n: '{"a":' * n + "1" + "}" * n))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


TOML_SCALARS = st.booleans() | st.integers(-(2 ** 63), 2 ** 63 - 1) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12) | st.sampled_from(["ghcr.io", "ghcr.io/acme", "localhost:5000", "all", "digest-only",
                                              "tag-only", "keys/a.pub", "/etc/passwd", "../x", "http://h"])
TOML_VALUES = st.recursive(TOML_SCALARS, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.sampled_from(["prefix", "location", "mirror", "insecure", "keys",
                                                              "pull-from-mirror", "enforce", "x"])
                                             | st.text(max_size=6), c, max_size=4), max_leaves=16)
TOML_DOCS = st.dictionaries(st.sampled_from(["trust", "registry", "other"]), TOML_VALUES, max_size=3).map(
    lambda d: "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in d.items()))
TOML_PIECES = st.sampled_from(["[[trust]]", "[[registry]]", "[[registry.mirror]]", "\n", "prefix = ", "location = ",
                               "keys = ", "insecure = ", '"ghcr.io"', "'x'", "[", "]", "{", "}", ",", "=", "true",
                               "1", "1e400", '"""', "#", "a.b", "\x00", "\\u0000", " "])
TOML_TEXT = st.lists(TOML_PIECES, max_size=30).map("".join) | st.text(max_size=60)
TOML_DEEP = st.integers(1, 3000).map(lambda n: "a = " + "[" * n + "]" * n) \
    | st.integers(1, 3000).map(lambda n: "a = " + "{b = " * n + "1" + "}" * n)


@fuzz(2000)
@given(TOML_DOCS | TOML_TEXT | TOML_DEEP)
def test_trust_policy_and_mirrors_toml(text):
    for parser in (parse_policy, parse_config):
        with only_modelpkg_errors():
            parser(text)


# ---------------------------------------------------------------------------------------------------------
# names and Modelfiles: long pathological inputs (backtracking regular expressions would hang here; the
# structure is fuzzed in tests/test_reference.py and tests/test_modelfile.py)

NAME_PIECES = st.sampled_from(["a", "A", "-", ".", "_", "__", "/", ":", "@", "sha256:", "0", "é", " ", "localhost",
                               ":5000", "[::1]", "\x00"])
LONG = st.builds(lambda pieces, n: "".join(pieces) * n, st.lists(NAME_PIECES, min_size=1, max_size=4),
                 st.integers(1, 3000))


@fuzz(3000)
@given(LONG | st.lists(NAME_PIECES, max_size=40).map("".join))
def test_name_parser_on_long_pathological_names(text):
    with only_modelpkg_errors():
        parse_reference(text)


MODELFILE_PIECES = st.sampled_from(["FROM ", "PARAMETER ", "TEMPLATE ", "SYSTEM ", "MESSAGE ", "LICENSE ",
                                    "ADAPTER ", '"""', '"', "\\", "\n", "#", " ", "\t", "temperature ", "stop ",
                                    "user ", "x", "\r\n", "\x00", "\ufeff"])


@fuzz(2000)
@given(st.builds(lambda pieces, n: "".join(pieces) * n, st.lists(MODELFILE_PIECES, min_size=1, max_size=5),
                 st.integers(1, 2000)))
def test_modelfile_parser_on_long_pathological_text(text):
    from modelpkg.core.modelfile import parse

    with only_modelpkg_errors():
        parse(text)


@fuzz(1000)
@given(DEEP.map(str.encode) | st.binary(max_size=60)
       | DEEP.map(lambda d: ('{"schemaVersion":2,"layers":' + d + "}").encode()),
       st.none() | st.sampled_from([mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, "text/html"]))
def test_manifest_reader_on_deep_or_binary_documents(data, media_type):
    """tests/test_manifest.py fuzzes its structure; here: nesting past the stack and bytes that are not JSON."""
    with only_modelpkg_errors():
        parsed = parse_manifest(data, media_type)
        if isinstance(parsed, Manifest):
            model_layers(parsed)


# ---------------------------------------------------------------------------------------------------------
# credentials files


def test_credentials_files(tmp_path, monkeypatch):
    docker, podman = tmp_path / "docker", tmp_path / "podman.json"
    docker.mkdir()
    monkeypatch.setenv("MODELPKG_CONFIG_DIR", str(tmp_path / "modelpkg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman))
    (tmp_path / "modelpkg").mkdir()
    files = [credentials.login_path(), docker / "config.json", podman]
    host = "registry.example:5000"
    entries = JSON | st.fixed_dictionaries({}, optional={"auth": st.text(max_size=16) | st.binary(max_size=12).map(
        lambda b: base64.b64encode(b).decode()), "username": JSON, "password": JSON,
        "identitytoken": JSON})

    @fuzz(1500)
    @given(st.sampled_from(files), st.one_of(
        JSON.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from([host, "https://" + host, "http://" + host + "/v1/", "x"]), entries,
                        max_size=3).map(lambda a: json.dumps({"auths": a}).encode()),
        DEEP.map(lambda d: ('{"auths":' + d + "}").encode()), DEEP.map(str.encode), st.binary(max_size=40)))
    def check(path, data):
        for f in files:
            f.unlink(missing_ok=True)
        path.write_bytes(data)
        with only_modelpkg_errors():
            credentials.lookup(host)

    check()


# ---------------------------------------------------------------------------------------------------------
# the WWW-Authenticate parser and the token service's answer

CHALLENGE_PIECES = st.sampled_from(["Bearer ", "Basic ", "realm=", "service=", "scope=", "error=", '"', "\\", ",",
                                    " ", "=", "http://127.0.0.1/t", "https://x/", "https://x:99999/", "http://[::1", "http://h:x/",
                                    "http://169.254.169.254/", "repository:a:pull", "\t", "\x00",
                                    "é", "Negotiate"])


URL_PIECES = st.sampled_from(["http://", "https://", "ftp://", "file:///", "127.0.0.1", "[::1]", "[fe80::1%25eth0]",
                              "169.254.169.254", "metadata.google.internal", "x", ":", ":99999", ":0", ":abc", "[",
                              "/token", "?q=1", "#f", "@", "user:pw@", "%", " "])
REALMS = st.lists(URL_PIECES, max_size=8).map("".join)


@fuzz(3000)
@given(st.lists(CHALLENGE_PIECES, max_size=20).map("".join) | st.text(max_size=80)
       | st.builds(lambda realm, rest: f'Bearer realm="{realm}"{rest}', REALMS, st.text(max_size=20)))
def test_www_authenticate_parser(header):
    with only_modelpkg_errors():
        for challenge in auth.parse_challenges(header):
            assert isinstance(challenge.realm, str) and isinstance(challenge.service, str)
            assert all(isinstance(s, str) for s in challenge.scopes)
            assert isinstance(challenge.error, str)
            auth.check_realm(challenge.realm, registry_secure=True, resolve=lambda *a, **k: [])


class _Response:
    """What the Authenticator reads of a token service's answer (status, body)."""

    def __init__(self, body: bytes):
        self.status_code, self.content, self.headers = 200, body, {}
        self.text = body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)

    def close(self):
        pass


@fuzz(1500)
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"token": JSON | st.text(min_size=1, max_size=8)},
                                       optional={"expires_in": JSON, "refresh_token": JSON, "access_token": JSON})
                 .map(lambda v: json.dumps(v).encode()),
                 DEEP.map(str.encode), st.binary(max_size=30)))
def test_token_service_answer(body):
    def send(method, url, **kw):
        if "token" in url:
            return _Response(body)
        raise AssertionError(url)

    authenticator = auth.Authenticator("registry.example", None, send, registry_secure=True,
                                       resolve=lambda *a, **k: [])
    with only_modelpkg_errors():
        authenticator.handle_401('Bearer realm="https://auth.example/token",service="s"',
                                 ["repository:a:pull"], None)
        authenticator.header(["repository:a:pull"])


# ---------------------------------------------------------------------------------------------------------
# a stored model's config, parameters, messages, layer annotations (models.describe, as `show` and `run`)


@pytest.fixture(scope="module")
def fuzz_store():
    with tempfile.TemporaryDirectory() as folder:
        yield Store(Path(folder) / "store").init()


ANNOTATION_VALUES = st.text(max_size=8) | st.sampled_from(["²", "٣", "99999999999999999999999", "-1", "", "1_0"])
ANNOTATIONS = st.dictionaries(st.sampled_from([mt.ROLE, mt.TITLE, mt.CONTEXT_LENGTH, mt.MODELPACK_FILEPATH,
                                               mt.MODELFILE]) | st.text(max_size=6), ANNOTATION_VALUES, max_size=4)
BLOB = JSON.map(lambda v: json.dumps(v).encode()) | DEEP.map(str.encode) | st.binary(max_size=40)
LAYER_TYPES = st.sampled_from([mt.OLLAMA_MODEL, mt.OLLAMA_PARAMS, mt.OLLAMA_MESSAGES, mt.OLLAMA_TEMPLATE,
                               mt.OLLAMA_SYSTEM, mt.OLLAMA_LICENSE, mt.MODELPACK_WEIGHT, mt.DMR_GGUF,
                               mt.DMR_CHAT_TEMPLATE, mt.KITOPS_PREFIX + "model.v1.tar", "text/plain"])
CONFIG_TYPES = st.sampled_from([mt.MODELPACK_CONFIG, mt.DOCKER_CONFIG, mt.DMR_CONFIG, mt.OCI_EMPTY, mt.KITOPS_CONFIG])


@fuzz(800)
@given(CONFIG_TYPES, BLOB | st.builds(lambda inner, outer: json.dumps({**outer, "config": inner}).encode(), JSON,
                                      st.dictionaries(st.sampled_from(["model_family", "model_type", "file_type",
                                                                       "context_length"]), JSON)),
       st.lists(st.tuples(LAYER_TYPES, ANNOTATIONS, BLOB), max_size=5), ANNOTATIONS)
def test_describe_reads_any_stored_config_and_layers(fuzz_store, config_type, config, layers, annotations):
    store = fuzz_store
    with store.session() as pins:
        config_desc = Descriptor(config_type, store.put_bytes(config, pins), len(config))
        descs = [Descriptor(media_type, store.put_bytes(data, pins), len(data), annots)
                 for media_type, annots, data in layers]
        manifest = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config_desc.to_json(),
                                   "layers": [d.to_json() for d in descs], "annotations": annotations})
        ref = parse_reference("localhost:5000/fuzz/model:v1")
        store.tag(ref, manifest, mt.OCI_MANIFEST, pins)
    with only_modelpkg_errors():
        details = describe(store, ref)
        details.to_json()


# ---------------------------------------------------------------------------------------------------------
# tars: the archive reader (`load`) and the KitOps model tar extraction

HOSTILE_NAMES = st.sampled_from(["index.json", "oci-layout", "blobs/sha256/" + "a" * 64, "blobs/sha512/" + "b" * 128,
                                 "model.gguf", "dir/m.gguf", "../evil.gguf", "/etc/evil", "a/../../b", "C:/x",
                                 "a\\..\\b", "./index.json", "blobs", "x" * 300, "é.gguf"])
MEMBERS = st.lists(st.tuples(HOSTILE_NAMES | st.text(max_size=10),
                             st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                              tarfile.FIFOTYPE, tarfile.CHRTYPE]),
                             st.binary(max_size=64) | st.just(b"GGUF\x03\x00\x00\x00" + bytes(24)),
                             st.sampled_from(["", "../../outside", "/etc/passwd", "model.gguf"]),
                             st.integers(-2, 3)),  # a lie about the size: declared = real + this
                   max_size=6)


def _tar(members, mangle) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data, link, _lie in members:
            info = tarfile.TarInfo(name.replace("\x00", "") or "x")
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    raw = out.getvalue()
    cut, flip, compress = mangle
    if flip is not None and raw:
        i = flip % len(raw)
        raw = raw[:i] + bytes([raw[i] ^ 0x5A]) + raw[i + 1:]
    if cut is not None:
        raw = raw[:cut]
    return {"": raw, "gz": gzip.compress(raw), "bz2": bz2.compress(raw), "xz": lzma.compress(raw),
            "gz-cut": gzip.compress(raw)[: len(raw) // 2 + 10]}[compress]


MANGLE = st.tuples(st.none() | st.integers(0, 4096), st.none() | st.integers(0, 1 << 16),
                   st.sampled_from(["", "", "gz", "bz2", "xz", "gz-cut"]))
TARS = st.builds(_tar, MEMBERS, MANGLE) | st.binary(max_size=600)


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@fuzz(300)
@given(TARS)
def test_load_reads_any_tar(fuzz_store, data):
    store = fuzz_store
    outside = store.root.parent
    before = _snapshot(outside) - _snapshot(store.root)
    refs_before = store.refs()
    with only_modelpkg_errors():
        interop.load(store, io.BytesIO(data))
    assert _snapshot(outside) - _snapshot(store.root) == before
    assert store.refs() == refs_before  # arbitrary bytes never name a model
    assert not list(store.root.rglob("tmp*"))


@fuzz(800)
@given(TARS)
def test_kitops_extraction_of_any_tar(fuzz_store, data):
    store = fuzz_store
    with store.session() as pins:
        layer = Descriptor(mt.KITOPS_PREFIX + "model.v1.tar", store.put_bytes(data, pins), len(data))
        with only_modelpkg_errors():
            made = extract_gguf(store, layer, pins)
            assert store.read_blob(made, limit=1 << 20)[:4] == b"GGUF"
    assert not [p for p in store.root.rglob("*") if p.name.startswith(("kitops", "tmp"))]


# ---------------------------------------------------------------------------------------------------------
# the template renderer on arbitrary conversations

_CONFORMANCE = Path(os.environ.get("MODELPKG_CONFORMANCE")
                    or Path(__file__).resolve().parents[3] / "shared" / "conformance")
REAL_TEMPLATES = sorted(p.read_text(encoding="utf-8")
                        for p in (_CONFORMANCE / "ollama-templates").glob("*/template.gotmpl")) or [
    "{{ range .Messages }}{{ .Role }}: {{ .Content }}{{ end }}"]
LOOPING_TEMPLATES = [
    "{{ range .Messages }}{{ range $.Messages }}{{ range $.Messages }}{{ .Content }}{{ end }}{{ end }}{{ end }}",
    "{{ range $i, $m := .Messages }}{{ printf \"%s%s%s%s\" .Content .Content .Content .Content }}{{ end }}",
    "{{ range .Messages }}{{ json $.Messages }}{{ end }}",
    "{{ range 100000 }}{{ range 100000 }}x{{ end }}{{ end }}",
]
TEXT = st.text(max_size=40) | st.sampled_from(["{{ .Content }}", "<|im_end|>", "\x00", "\ud800", "x" * 5000])
TOOL_CALLS = st.lists(st.fixed_dictionaries({}, optional={
    "function": st.fixed_dictionaries({}, optional={"name": JSON, "arguments": JSON, "index": JSON}) | JSON,
    "id": JSON, "type": JSON}) | JSON, max_size=3) | JSON
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]) | JSON},
                                optional={"content": TEXT | JSON, "thinking": TEXT | JSON, "images": JSON,
                                          "tool_calls": TOOL_CALLS, "tool_name": TEXT | JSON,
                                          "tool_call_id": JSON}) | JSON
FUNCTION = st.fixed_dictionaries({"name": TEXT, "parameters": JSON}, optional={"description": JSON})
TOOLS = st.none() | st.lists(st.fixed_dictionaries({"type": st.just("function") | JSON, "function": JSON | FUNCTION})
                             | JSON, max_size=2)


@fuzz(800)
@given(st.sampled_from(REAL_TEMPLATES + LOOPING_TEMPLATES), st.lists(MESSAGE, max_size=12), TOOLS,
       st.none() | st.booleans() | st.sampled_from(["high", "low", "x"]) | JSON)
def test_render_any_conversation(source, messages, tools, think):
    with only_modelpkg_errors():
        out = prompt.render(source, messages, tools=tools, think=think)
        assert isinstance(out, str) and len(out) <= MAX_OUTPUT


def test_a_batch_line_nested_past_the_stack_is_that_lines_error(home, gemma_gguf, tmp_path):
    """`run --batch` reads hostile JSON lines: a line too deep is an error record, the next line still runs."""
    from click.testing import CliRunner

    from modelpkg.cli.app import cli

    (tmp_path / "Modelfile").write_text(f"FROM {gemma_gguf}\n")
    assert CliRunner().invoke(cli, ["create", "batchy", "-f", str(tmp_path / "Modelfile")]).exit_code == 0
    batch = tmp_path / "in.jsonl"
    batch.write_text("[" * 100_000 + "\n" + '{"a":' * 50_000 + "\n"
                     + '{"prompt": "hi", "options": {"num_predict": 1}}\n')
    result = CliRunner().invoke(cli, ["run", "batchy", "--batch", str(batch)], catch_exceptions=False)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3], result.stderr
    assert all("nested too deeply" in r["error"] for r in records[:2]) and "error" not in records[2]


# ---------------------------------------------------------------------------------------------------------
# the Ollama-compatible API server on arbitrary request bodies (an empty store: no model is loaded)

API_PATHS = ["/api/show", "/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/delete",
             "/api/copy", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
API_FIELDS = st.sampled_from(["model", "name", "prompt", "messages", "options", "stream", "format", "keep_alive",
                              "input", "source", "destination", "think", "tools", "images", "system", "template",
                              "raw", "suffix", "max_tokens", "temperature", "stop"])
API_BODIES = st.one_of(
    st.dictionaries(API_FIELDS, JSON | st.sampled_from(["tiny", "tiny:latest", "../x", "Bad Name", "5m", "-1"]),
                    max_size=6).map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda v: json.dumps(v).encode()), DEEP.map(str.encode), st.binary(max_size=40))


@pytest.fixture(scope="module")
def api_server():
    import threading

    from modelpkg.server import app as sv

    with tempfile.TemporaryDirectory() as folder:
        server = sv.make_server(Store(Path(folder) / "store").init(), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server
        server.shutdown()
        server.close()


@fuzz(1000)
@given(st.sampled_from(API_PATHS), API_BODIES)
def test_api_server_answers_any_body_without_a_500(api_server, path, body):
    import requests

    start = time.monotonic()
    response = requests.post(api_server.url + path, data=body, timeout=10)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert time.monotonic() - start < PER_EXAMPLE_SECONDS
