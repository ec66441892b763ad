"""Every model-artifact dialect: push --format modelpack|ollama|docker, and pull of Ollama, Docker Model
Runner, plain ORAS and KitOps artifacts.

Fixture manifests are built by hand from each format's documentation (ollama-behaviour.md section 2,
oci-model-artifacts.md sections 1 and 3), pushed to the real registry with plain requests, and pulled back
with modelpkg. Expected Ollama blob bytes are written out by hand from Ollama's rules, not computed with
modelpkg's encoder.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from artifacts import member, publish, publish_kitops, tar_bytes
from conftest import make_gguf
from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core import formats
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.core.manifest import Descriptor, go_json, parse_manifest
from modelpkg.ops.pull import pull
from modelpkg.ops.push import push
from modelpkg.store import Store
from registry_env import push_manifest

pytestmark = [pytest.mark.timeout(180)]

MODELFILE_EXTRAS = (
    'TEMPLATE "<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n"\n'
    "SYSTEM You are terse & precise.\n"
    "PARAMETER temperature 0.7\n"
    'PARAMETER stop "<|im_start|>"\n'
    'PARAMETER stop "<|im_end|>"\n'
    "PARAMETER num_ctx 4096\n"
    "PARAMETER top_p 0.9\n"
    "PARAMETER use_mmap true\n"
    "LICENSE Apache-2.0 <terms>\n"
    "MESSAGE user Is Toronto in Canada?\n"
    "MESSAGE assistant yes\n"
)
# Ollama's bytes for those inputs, written out by hand from ollama-behaviour.md 2.4
OLLAMA_TEMPLATE = b"<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n"
OLLAMA_SYSTEM = b"You are terse & precise."
OLLAMA_LICENSE = b"Apache-2.0 <terms>"
OLLAMA_PARAMS = (b'{"num_ctx":4096,"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"],'
                 b'"temperature":0.7,"top_p":0.9,"use_mmap":true}\n')
OLLAMA_PARAMS_SHA = "3002203173f8432a2eef63c232cfafd2a44eec608de9a9321eded63d0aebb8eb"  # verified with Ollama
OLLAMA_MESSAGES = b'[{"role":"user","content":"Is Toronto in Canada?"},{"role":"assistant","content":"yes"}]\n'


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def store() -> Store:
    return Store(config.home())


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def registry_manifest(registry, repo: str, reference: str, accept: str) -> tuple[bytes, str]:
    r = requests.get(f"{registry.url}/v2/{repo}/manifests/{reference}", headers={"Accept": accept}, timeout=10)
    r.raise_for_status()
    return r.content, r.headers["Content-Type"]


def show(name: str) -> dict:
    result = run("show", name, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------------------------------------
# pure: Ollama's encodings


def test_ollama_params_example_digest_is_ollamas():
    assert hashlib.sha256(OLLAMA_PARAMS).hexdigest() == OLLAMA_PARAMS_SHA
    params = {"num_ctx": 4096, "stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7, "top_p": 0.9,
              "use_mmap": True}
    assert go_json(params) == OLLAMA_PARAMS


def test_ollama_config_and_messages_are_go_struct_order():
    facts = formats.ModelFacts("llama", "8.0B", "Q4_K_M", 1)
    assert formats.ollama_config(facts) == (
        b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"8.0B",'
        b'"file_type":"Q4_K_M","architecture":"amd64","os":"linux"}\n')
    messages = [{"content": "Is Toronto in Canada?", "role": "user"}, {"role": "assistant", "content": "yes"}]
    assert formats.ollama_messages(messages) == OLLAMA_MESSAGES


def test_ollama_manifest_is_json_marshal_of_the_struct():
    config = Descriptor(mt.DOCKER_CONFIG, Digest.of(b"c"), 1)
    layer = Descriptor(mt.OLLAMA_MODEL, Digest.of(b"m"), 1, {mt.TITLE: "dropped"})
    manifest = formats.ollama_manifest(config, [layer])
    assert manifest.to_bytes() == (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{Digest.of(b"c")}","size":1}},'
        f'"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{Digest.of(b"m")}","size":1}}]}}'
    ).encode()
    assert parse_manifest(manifest.to_bytes()) == manifest


def test_dmr_config_fields():
    facts = formats.ModelFacts("gemma3", "268.10M", "Q4_K_M", 253 * 1024 * 1024,
                               gguf_metadata={"general.architecture": "gemma3", "x.count": 3,
                                              "tokens": list(range(51)), "small": [1, 2]})
    config = json.loads(formats.dmr_config(facts, [Digest.of(b"m")], context_size=4096, created="2025-01-01T00:00:00Z"))
    assert config == {
        "config": {"format": "gguf", "quantization": "Q4_K_M", "parameters": "268.10M", "architecture": "gemma3",
                   "size": "253.00MiB", "gguf": {"general.architecture": "gemma3", "x.count": "3", "small": "[1 2]"},
                   "context_size": 4096},
        "descriptor": {"created": "2025-01-01T00:00:00Z"},
        "rootfs": {"type": "rootfs", "diff_ids": [str(Digest.of(b"m"))]},
    }


def test_unknown_format_is_a_usage_error(home, tiny_model):
    ref = tiny_model("tiny")
    result = run("push", "--format", "safetensors", str(ref))
    assert result.exit_code == 2


# ---------------------------------------------------------------------------------------------------------
# push --format ollama: Ollama's bytes, checked by hand and by skopeo


@pytest.mark.registry
def test_ollama_push_has_ollamas_digests_layer_order_and_skopeo_reads_it(registry, tiny_model, tiny_gguf):
    name = f"{registry.host}/library/tiny-ollama:q4"
    ref = tiny_model(name, MODELFILE_EXTRAS)
    local_before = store().resolve(ref)
    result = run("push", "--format", "ollama", "--json", name)
    assert result.exit_code == 0, result.stderr
    final = json.loads(result.stdout.splitlines()[-1])
    assert final["format"] == "ollama"

    # Ollama's pull asks only for the Docker v2 media type
    raw, content_type = registry_manifest(registry, "library/tiny-ollama", "q4", mt.DOCKER_MANIFEST)
    assert content_type == mt.DOCKER_MANIFEST
    assert final["digest"] == sha(raw)
    doc = json.loads(raw)
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    assert doc["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    gguf = tiny_gguf.read_bytes()
    expected = [
        ("application/vnd.ollama.image.model", gguf),
        ("application/vnd.ollama.image.template", OLLAMA_TEMPLATE),
        ("application/vnd.ollama.image.system", OLLAMA_SYSTEM),
        ("application/vnd.ollama.image.license", OLLAMA_LICENSE),
        ("application/vnd.ollama.image.params", OLLAMA_PARAMS),
        ("application/vnd.ollama.image.messages", OLLAMA_MESSAGES),
    ]
    assert [(layer["mediaType"], layer["digest"], layer["size"]) for layer in doc["layers"]] == \
        [(media_type, sha(data), len(data)) for media_type, data in expected]
    assert [list(layer) for layer in doc["layers"]] == [["mediaType", "digest", "size"]] * len(expected)
    assert doc["layers"][4]["digest"] == "sha256:" + OLLAMA_PARAMS_SHA
    config_bytes = requests.get(f"{registry.url}/v2/library/tiny-ollama/blobs/{doc['config']['digest']}",
                                timeout=10).content
    assert config_bytes == (b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],'
                            b'"model_type":"64","file_type":"F16","architecture":"amd64","os":"linux"}\n')

    # skopeo reads the manifest as sent; its full inspect refuses Ollama's layer media types in a Docker v2
    # manifest, exactly as it refuses the manifests registry.ollama.ai serves (containers/image schema2 check)
    skopeo = ["skopeo", "inspect", "--tls-verify=false"]
    assert subprocess.run([*skopeo, "--raw", f"docker://{name}"], capture_output=True, check=True).stdout == raw
    done = subprocess.run([*skopeo, f"docker://{name}"], capture_output=True, text=True)
    assert done.returncode != 0 and "unsupported docker v2s2 media type" in done.stderr
    assert "application/vnd.ollama.image.model" in done.stderr

    # the local name still points at the ModelPack manifest
    assert store().resolve(ref).digest == local_before.digest


# ---------------------------------------------------------------------------------------------------------
# round trips: create -> push --format X -> rm -> pull -> show

JINJA = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


@pytest.fixture
def full_model(home, tmp_path):
    """A model with every kind of layer, from a GGUF that carries a Jinja chat template."""
    from modelpkg.ops.create import create

    def make(name: str):
        folder = tmp_path / "full"
        folder.mkdir(exist_ok=True)
        gguf = make_gguf(folder / "full.gguf", arch="gemma3", file_type=7, chat_template=JINJA)
        ref = config.reference(name)
        create(store(), ref, f"FROM {gguf}\n{MODELFILE_EXTRAS}", folder, resolve_name=config.reference)
        return ref, gguf

    return make


@pytest.mark.registry
@pytest.mark.parametrize("fmt", ["modelpack", "ollama", "docker"])
def test_round_trip_preserves_what_the_format_carries(registry, full_model, fmt):
    name = f"{registry.host}/acme/round-{fmt}:v1"
    _ref, gguf = full_model(name)
    before = show(name)
    pushed = run("push", "--format", fmt, name)
    assert pushed.exit_code == 0, pushed.stderr
    assert run("rm", name).exit_code == 0
    pulled = run("pull", name)
    assert pulled.exit_code == 0, pulled.stderr
    after = show(name)

    same = ["architecture", "parameter_size", "quantization", "context_length", "license", "licenses"]
    assert {k: after[k] for k in same} == {k: before[k] for k in same}
    assert (before["architecture"], before["quantization"]) == ("gemma3", "Q8_0")
    assert Path(after["model_path"]).read_bytes() == gguf.read_bytes()
    kept = ["template", "system", "parameters", "messages"]
    if fmt == "docker":
        # Docker Model Runner's format has no place for them: push says so, and carries the GGUF's Jinja
        # chat template as its own layer
        for what in ("Go TEMPLATE", "SYSTEM", "PARAMETERs", "MESSAGEs"):
            assert what in pushed.stderr
        assert {k: after[k] for k in kept} == {"template": None, "system": None, "parameters": {}, "messages": []}
        assert after["chat_template"] == JINJA
        assert [layer["mediaType"] for layer in after["layers"]] == [mt.DMR_GGUF, mt.DMR_LICENSE, mt.DMR_CHAT_TEMPLATE]
    else:
        assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
        assert after["template"] == OLLAMA_TEMPLATE.decode() and after["system"] == OLLAMA_SYSTEM.decode()
        assert after["parameters"]["stop"] == ["<|im_start|>", "<|im_end|>"]
        assert after["messages"] == [{"role": "user", "content": "Is Toronto in Canada?"},
                                     {"role": "assistant", "content": "yes"}]
    if fmt == "modelpack":
        assert after == before


@pytest.mark.registry
def test_docker_push_config_is_dmrs(registry, full_model):
    name = f"{registry.host}/ai/dmr-out:v1"
    ref, gguf = full_model(name)
    digest = push(store(), ref, format="docker")
    raw, content_type = registry_manifest(registry, "ai/dmr-out", "v1", mt.OCI_MANIFEST)
    assert content_type == mt.OCI_MANIFEST and sha(raw) == str(digest)
    doc = json.loads(raw)
    assert "artifactType" not in doc  # DMR's own format is told by its config media type
    assert doc["config"]["mediaType"] == "application/vnd.docker.ai.model.config.v0.1+json"
    layers = doc["layers"]
    assert [layer["mediaType"] for layer in layers] == [
        "application/vnd.docker.ai.gguf.v3", "application/vnd.docker.ai.license",
        "application/vnd.docker.ai.chat.template.jinja"]
    assert layers[0]["digest"] == sha(gguf.read_bytes())
    assert layers[1]["digest"] == sha(OLLAMA_LICENSE)
    assert layers[2]["digest"] == sha(JINJA.encode())
    assert layers[0]["annotations"][mt.MODELPACK_FILEPATH] == "model.gguf"
    config_doc = requests.get(f"{registry.url}/v2/ai/dmr-out/blobs/{doc['config']['digest']}", timeout=10).json()
    inner = config_doc["config"]
    assert (inner["format"], inner["architecture"], inner["quantization"]) == ("gguf", "gemma3", "Q8_0")
    assert inner["context_size"] == 4096  # num_ctx is the one parameter DMR's config has a place for
    assert inner["size"].endswith("B") and inner["parameters"]
    assert inner["gguf"]["general.architecture"] == "gemma3"
    assert inner["gguf"]["tokenizer.chat_template"] == JINJA
    assert config_doc["rootfs"] == {"type": "rootfs", "diff_ids": [layer["digest"] for layer in layers]}


def test_docker_format_refuses_an_adapter(home, tiny_model, tmp_path, registry):
    adapter = make_gguf(tmp_path / "lora.gguf", model_type="adapter", seed=3)
    ref = tiny_model(f"{registry.host}/acme/lora:v1", f"ADAPTER {adapter}\n")
    result = run("push", "--format", "docker", str(ref))
    assert result.exit_code != 0
    assert "no place for a LoRA adapter" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# pulling hand-made artifacts of every dialect


@pytest.mark.registry
def test_pull_a_hand_made_ollama_model(registry, home, tiny_gguf):
    config_bytes = (b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],'
                    b'"model_type":"64","file_type":"F16","architecture":"amd64","os":"linux"}\n')
    name = publish(registry, "library/hand-ollama", "latest", (mt.DOCKER_CONFIG, config_bytes), [
        ("application/vnd.ollama.image.model", tiny_gguf.read_bytes()),
        ("application/vnd.ollama.image.template", OLLAMA_TEMPLATE),
        ("application/vnd.ollama.image.system", OLLAMA_SYSTEM),
        ("application/vnd.ollama.image.license", OLLAMA_LICENSE),
        ("application/vnd.ollama.image.params", OLLAMA_PARAMS),
        ("application/vnd.ollama.image.messages", OLLAMA_MESSAGES),
    ], media_type=mt.DOCKER_MANIFEST)
    assert run("pull", name).exit_code == 0
    got = show(name)
    assert (got["architecture"], got["parameter_size"], got["quantization"]) == ("llama", "64", "F16")
    assert (got["template"], got["system"], got["license"]) == (
        OLLAMA_TEMPLATE.decode(), OLLAMA_SYSTEM.decode(), OLLAMA_LICENSE.decode())
    assert got["parameters"]["num_ctx"] == 4096 and got["messages"][1] == {"role": "assistant", "content": "yes"}
    assert Path(got["model_path"]).read_bytes() == tiny_gguf.read_bytes()


@pytest.mark.registry
def test_pull_a_hand_made_docker_model_runner_model(registry, home, tmp_path):
    gguf = make_gguf(tmp_path / "dmr.gguf", arch="qwen2", file_type=7, context_length=512)
    config_doc = {"config": {"format": "gguf", "quantization": "Q8_0", "parameters": "64", "architecture": "qwen2",
                             "size": "1.50KiB", "gguf": {"general.architecture": "qwen2"}, "context_size": 512},
                  "descriptor": {"created": "2025-05-01T00:00:00Z"},
                  "rootfs": {"type": "rootfs", "diff_ids": []}}
    name = publish(registry, "ai/hand-dmr", "latest", (mt.DMR_CONFIG, json.dumps(config_doc).encode()), [
        ("application/vnd.docker.ai.gguf.v3", gguf.read_bytes(), {mt.MODELPACK_FILEPATH: "model.gguf"}),
        ("application/vnd.docker.ai.license", b"MIT", {mt.MODELPACK_FILEPATH: "LICENSE"}),
        ("application/vnd.docker.ai.chat.template.jinja", JINJA.encode(), {mt.MODELPACK_FILEPATH: "template.jinja"}),
    ])
    assert run("pull", name).exit_code == 0
    got = show(name)
    assert (got["architecture"], got["parameter_size"], got["quantization"]) == ("qwen2", "64", "Q8_0")
    assert (got["license"], got["chat_template"], got["template"]) == ("MIT", JINJA, None)
    assert got["context_length"] == 512
    assert Path(got["model_path"]).read_bytes() == gguf.read_bytes()


@pytest.mark.registry
def test_pull_a_plain_oras_artifact_with_a_gguf_file(registry, home, tiny_gguf):
    name = publish(registry, "acme/plain-oras", "v1", (mt.OCI_EMPTY, b"{}"), [
        ("application/octet-stream", tiny_gguf.read_bytes(), {mt.TITLE: "weights.Q8.gguf"}),
        ("text/plain", b"BSD", {mt.TITLE: "LICENSE"}),
    ], artifact_type="application/vnd.example.model")
    assert run("pull", name).exit_code == 0
    got = show(name)
    facts = (got["architecture"], got["quantization"], got["context_length"], got["license"])
    assert facts == ("llama", "F16", 256, "BSD")
    assert Path(got["model_path"]).read_bytes() == tiny_gguf.read_bytes()


@pytest.mark.registry
@pytest.mark.parametrize("compressed", [False, True])
def test_pull_a_kitops_modelkit_extracts_the_gguf(registry, home, tiny_gguf, compressed):
    data = tiny_gguf.read_bytes()
    model_tar = tar_bytes([(member("models", tarfile.DIRTYPE), None), (member("models/tiny.gguf"), data)],
                          compressed)
    name = publish_kitops(registry, f"acme/kit-{int(compressed)}", model_tar, compressed)
    pulled = run("pull", name)
    assert pulled.exit_code == 0, pulled.stderr
    got = show(name)
    assert Path(got["model_path"]).read_bytes() == data  # the extracted GGUF, its own blob
    assert Path(got["model_path"]).name == hashlib.sha256(data).hexdigest()
    assert (got["architecture"], got["quantization"], got["context_length"]) == ("llama", "F16", 256)

    # the derived blob lives while a name needs it: gc keeps it, cp carries it, rm of the last name frees it
    s = store()
    gguf_digest = Digest.of(data)
    entry = s.resolve(config.reference(name))
    assert entry.derived == ((Digest.of(model_tar), gguf_digest),)
    assert gguf_digest in s.referenced()
    assert gguf_digest not in {d for d, _ in s.gc(grace=0).blobs}
    assert run("cp", name, "copy").exit_code == 0
    assert run("rm", name).exit_code == 0
    assert s.has_blob(gguf_digest) and show("copy")["model_path"] == got["model_path"]
    assert run("rm", "copy").exit_code == 0
    assert not s.has_blob(gguf_digest)
    assert s.verify() == []


@pytest.mark.registry
@pytest.mark.parametrize("bad_member, why", [
    (member("../evil.gguf"), "unsafe path"),
    (member("/abs/evil.gguf"), "unsafe path"),
    (member("models/tiny.gguf", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (member("models/hard.gguf", tarfile.LNKTYPE, "models/x"), "is a link"),
    (member("dev", tarfile.CHRTYPE), "not a regular file"),
])
def test_a_kitops_tar_with_an_unsafe_member_is_refused(registry, home, tiny_gguf, bad_member, why):
    data = None if bad_member.type in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE) else b"GGUF"
    model_tar = tar_bytes([(member("ok.txt"), b"fine"), (bad_member, data),
                           (member("models/t.gguf"), tiny_gguf.read_bytes())])
    name = publish_kitops(registry, "acme/kit-bad", model_tar, False)
    result = run("pull", name)
    assert result.exit_code != 0
    assert "refused" in result.stderr and why in result.stderr
    assert store().refs() == []  # nothing named
    assert not (Path(config.home()) / "evil.gguf").exists() and not Path("/abs/evil.gguf").exists()


@pytest.mark.registry
def test_a_kitops_tar_without_a_gguf_or_not_a_tar_is_refused(registry, home):
    name = publish_kitops(registry, "acme/kit-none", tar_bytes([(member("model.bin"), b"x")]), False)
    result = run("pull", name)
    assert result.exit_code != 0 and "holds no .gguf file" in result.stderr
    name = publish_kitops(registry, "acme/kit-junk", b"not a tar at all" * 100, True)
    result = run("pull", name)
    assert result.exit_code != 0 and "refused" in result.stderr


@pytest.mark.registry
def test_an_index_with_one_platformless_entry_is_followed(registry, home, tiny_gguf):
    publish(registry, "acme/one-entry", "inner", (mt.OCI_EMPTY, b"{}"), [
        ("application/octet-stream", tiny_gguf.read_bytes(), {mt.TITLE: "model.gguf"})])
    raw, _ = registry_manifest(registry, "acme/one-entry", "inner", mt.OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": sha(raw), "size": len(raw),
         "platform": {"os": "plan9", "architecture": "mips"}}]}
    push_manifest(requests.Session(), registry.url, "acme/one-entry", "idx", json.dumps(index).encode(), mt.OCI_INDEX)
    entry = pull(store(), config.reference(f"{registry.host}/acme/one-entry:idx"), platform=("linux", "amd64"))
    assert str(entry.digest) == sha(raw)  # the only entry is taken whatever its platform


# ---------------------------------------------------------------------------------------------------------
# the real model: a KitOps ModelKit and a Docker Model Runner artifact of Gemma run as the created model does


@pytest.mark.model
@pytest.mark.registry
def test_gemma_from_kitops_and_dmr_runs_like_the_created_model(registry, home, gemma_gguf, tmp_path):
    from modelpkg.ops import chat
    from modelpkg.ops.create import create
    from modelpkg.ops.models import describe

    create(store(), config.reference("gemma"), f"FROM {gemma_gguf}\n", gemma_gguf.parent,
           resolve_name=config.reference)
    data = gemma_gguf.read_bytes()
    kit = publish_kitops(registry, "acme/gemma-kit", tar_bytes([(member("gemma.gguf"), data)]), False)
    jinja = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
    dmr = publish(registry, "ai/gemma-dmr", "v1", (mt.DMR_CONFIG, b'{"config":{"format":"gguf"}}'), [
        ("application/vnd.docker.ai.gguf.v3", data),
        ("application/vnd.docker.ai.chat.template.jinja", jinja.encode()),
    ])
    del data
    for name in (kit, dmr):
        assert run("pull", name).exit_code == 0

    args = ["--temperature", "0", "--seed", "42", "--num-predict", "12"]
    expected = run("run", "gemma", PRIMARY_PROMPT, *args)
    assert expected.exit_code == 0 and expected.stdout.strip()
    got = run("run", kit, PRIMARY_PROMPT, *args)
    assert got.exit_code == 0, got.stderr
    assert got.stdout == expected.stdout
    assert show(kit)["architecture"] == "gemma3"

    # Gemma 3 270M's GGUF has no chat template: DMR's Jinja layer is used (over the GGUF's, when it has one)
    session = chat.Session(describe(store(), config.reference(dmr)))
    try:
        prompt = session.build_prompt([{"role": "user", "content": "Name a primary colour."}], session.runner())
        assert (prompt.kind, prompt.text) == (chat.GGUF_TEMPLATE, "Q: Name a primary colour.\nA:")
    finally:
        session.close()
    answered = run("run", dmr, "Name a primary colour.", *args)
    assert answered.exit_code == 0 and answered.stdout.strip()


PRIMARY_PROMPT = "Here is a list of three primary colors:\n1."


@pytest.mark.registry
def test_run_verifies_the_derived_gguf_and_push_sends_it(registry, home, tiny_gguf):
    data = tiny_gguf.read_bytes()
    name = publish_kitops(registry, "acme/kit-verify", tar_bytes([(member("tiny.gguf"), data)]), False)
    assert run("pull", name).exit_code == 0

    # pushed as Ollama's format, the model layer is the GGUF itself, not KitOps's tar
    out = f"{registry.host}/library/from-kit:v1"
    assert run("cp", name, out).exit_code == 0
    assert run("push", "--format", "ollama", out).exit_code == 0
    raw, _ = registry_manifest(registry, "library/from-kit", "v1", mt.DOCKER_MANIFEST)
    assert json.loads(raw)["layers"][0] == {"mediaType": mt.OLLAMA_MODEL, "digest": sha(data), "size": len(data)}

    path = Path(show(name)["model_path"])
    path.chmod(0o644)
    path.write_bytes(b"GGUF" + bytes(len(data) - 4))  # same size, other content
    result = run("run", name, "hi")
    assert result.exit_code != 0 and "corrupted" in result.stderr


@pytest.mark.registry
def test_a_pulled_ollama_model_pushes_as_stored_or_as_modelpack(registry, home, tiny_gguf):
    config_bytes = (b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],'
                    b'"model_type":"64","file_type":"F16","architecture":"amd64","os":"linux"}\n')
    source = publish(registry, "library/from-ollama", "v1", (mt.DOCKER_CONFIG, config_bytes), [
        ("application/vnd.ollama.image.model", tiny_gguf.read_bytes()),
        ("application/vnd.ollama.image.system", OLLAMA_SYSTEM),
        ("application/vnd.ollama.image.params", OLLAMA_PARAMS),
    ], media_type=mt.DOCKER_MANIFEST)
    assert run("pull", source).exit_code == 0
    stored = store().resolve(config.reference(source))
    before = show(source)

    mirror = f"{registry.host}/mirror/from-ollama:v1"  # as stored: the same bytes, the same digest
    assert run("cp", source, mirror).exit_code == 0
    result = run("push", "--json", mirror)
    assert json.loads(result.stdout.splitlines()[-1])["digest"] == str(stored.digest)

    converted = f"{registry.host}/acme/to-modelpack:v1"
    assert run("cp", source, converted).exit_code == 0
    assert run("push", "--format", "modelpack", converted).exit_code == 0
    raw, content_type = registry_manifest(registry, "acme/to-modelpack", "v1", mt.OCI_MANIFEST)
    doc = json.loads(raw)
    assert (content_type, doc["artifactType"], doc["config"]["mediaType"]) == (
        mt.OCI_MANIFEST, mt.MODELPACK_ARTIFACT, mt.MODELPACK_CONFIG)
    assert [layer["annotations"][mt.ROLE] for layer in doc["layers"]] == ["model", "system", "params"]
    assert run("rm", converted).exit_code == 0
    assert run("pull", converted).exit_code == 0
    after = show(converted)
    same = ["architecture", "parameter_size", "quantization", "context_length", "system", "parameters", "model_path"]
    assert {k: after[k] for k in same} == {k: before[k] for k in same}


@pytest.mark.registry
def test_create_from_a_kitops_or_dmr_model_keeps_the_gguf_and_the_jinja_template(registry, home, tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    kit = publish_kitops(registry, "acme/kit-base", tar_bytes([(member("tiny.gguf"), data)]), True)
    dmr = publish(registry, "ai/dmr-base", "v1", (mt.DMR_CONFIG, b'{"config":{"format":"gguf"}}'), [
        ("application/vnd.docker.ai.gguf.v3", data),
        ("application/vnd.docker.ai.chat.template.jinja", JINJA.encode()),
    ])
    for base in (kit, dmr):
        assert run("pull", base).exit_code == 0
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(f"FROM {base}\nSYSTEM derived\n")
        result = run("create", "derived", "-f", str(modelfile))
        assert result.exit_code == 0, result.stderr
        got = show("derived")
        assert Path(got["model_path"]).read_bytes() == data and got["system"] == "derived"
        assert got["chat_template"] == (JINJA if base == dmr else None)
        assert got["architecture"] == "llama"
