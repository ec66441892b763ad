"""Hugging Face as a registry (``modelpkg.registry.huggingface``), against a loopback Hub and CDN (tests/hf_env.py)
that answer as the Hub does: names keep their case, the tag is a quantization or a file name, ``latest`` is
Q4_K_M, refusals are 400 ``{"error": ...}``, blobs redirect to another host, the token goes to the Hub only.
"""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from conftest import make_gguf
from hf_env import NO_TAG, NOT_GGUF, SHARDED, FakeHub
from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core.errors import AuthError, InvalidInputError, InvalidReferenceError, NotFoundError
from modelpkg.core.reference import parse_reference
from modelpkg.ops.models import describe
from modelpkg.ops.pull import pull
from modelpkg.registry import huggingface
from modelpkg.registry.connect import client_for
from modelpkg.store import Store

REPO = "Bartowski/Tiny-Model-GGUF"


@pytest.fixture
def hub(tmp_path, monkeypatch, home):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    files = {f"Tiny-Model-{q}.gguf": make_gguf(tmp_path / f"{q}.gguf", seed=i).read_bytes()
             for i, q in enumerate(("Q4_K_M", "Q8_0", "IQ2_XS"))}
    files["Tiny-Model-F16-00001-of-00002.gguf"] = b"GGUF shard one"
    files["Tiny-Model-F16-00002-of-00002.gguf"] = b"GGUF shard two"
    files["README.md"] = b"# tiny"
    server.add(REPO, files)
    server.add("acme/Private-GGUF", {"p-Q4_K_M.gguf": files["Tiny-Model-Q8_0.gguf"]}, private=True)
    server.add("acme/safetensors-only", {"model.safetensors": b"{}", "config.json": b"{}"})
    server.files = files
    yield server
    server.stop()


def _store() -> Store:
    return Store(config.home())


def _weights(name: str) -> bytes:
    details = describe(_store(), config.reference(name))
    return details.model_path.read_bytes()


# ---------------------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("text, expected", [
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:latest"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
    ("HF.CO/User_1/My.Model-GGUF:q8_0", "hf.co/User_1/My.Model-GGUF:q8_0"),
    ("huggingface.co/TheBloke/Mistral-7B-GGUF:mistral-7b.Q4_K_M.gguf",
     "huggingface.co/TheBloke/Mistral-7B-GGUF:mistral-7b.Q4_K_M.gguf"),
])
def test_hugging_face_names_keep_their_case(text, expected):
    ref = parse_reference(text)
    assert str(ref) == expected
    assert parse_reference(str(ref)) == ref and ref.short() == expected


@pytest.mark.parametrize("text, says", [
    ("hf.co/bartowski", "hf.co/{user}/{repo}"),
    ("hf.co/a/b/c", "hf.co/{user}/{repo}"),
    ("hf.co/a/-b", "bad Hugging Face repository part '-b'"),
    ("hf.co/a/b--c", "bad Hugging Face repository part"),
    ("hf.co/a/b..c", "bad Hugging Face repository part"),
    ("hf.co/a/" + "b" * 97, "bad Hugging Face repository part"),
    ("ghcr.io/Acme/Model", "must be lowercase"),  # other hosts keep the OCI rule
])
def test_bad_hugging_face_names_are_one_line(text, says):
    with pytest.raises(InvalidReferenceError) as e:
        parse_reference(text)
    assert says in e.value.message and "\n" not in e.value.message


# ---------------------------------------------------------------------------------------------------------
# pulls


def test_pull_by_quant_keeps_the_name_and_asks_as_ollama_does(hub):
    pull(_store(), config.reference(f"hf.co/{REPO}:q8_0"))
    assert [e.name for e in _store().refs()] == [f"hf.co/{REPO}:q8_0"]
    assert _weights(f"hf.co/{REPO}:q8_0") == hub.files["Tiny-Model-Q8_0.gguf"]
    manifest_get = hub.state.hub_seen[0]
    assert manifest_get.path == f"/v2/{REPO}/manifests/q8_0"  # case kept on the wire
    assert manifest_get.accept == "application/vnd.docker.distribution.manifest.v2+json"


def test_latest_is_q4_k_m_and_a_file_name_is_a_tag(hub):
    pull(_store(), config.reference(f"hf.co/{REPO}"))
    assert _weights(f"hf.co/{REPO}:latest") == hub.files["Tiny-Model-Q4_K_M.gguf"]
    pull(_store(), config.reference(f"huggingface.co/{REPO}:Tiny-Model-IQ2_XS.gguf"))
    assert _weights(f"huggingface.co/{REPO}:Tiny-Model-IQ2_XS.gguf") == hub.files["Tiny-Model-IQ2_XS.gguf"]


def test_blobs_come_from_the_cdn_redirect_without_the_token(hub, monkeypatch):
    hub.state.tokens.add("hf_good")
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    pull(_store(), config.reference(f"hf.co/{REPO}:Q4_K_M"))
    gguf_hex = hashlib.sha256(hub.files["Tiny-Model-Q4_K_M.gguf"]).hexdigest()
    assert [s.path.split("?")[0] for s in hub.state.cdn_seen] == [f"/repos/{gguf_hex}"]
    assert all(s.authorization is None for s in hub.state.cdn_seen)
    assert hub.state.hub_seen and all(s.authorization == "Bearer hf_good" for s in hub.state.hub_seen)


def test_no_token_sends_no_authorization(hub):
    pull(_store(), config.reference(f"hf.co/{REPO}:Q4_K_M"))
    assert all(s.authorization is None for s in hub.state.hub_seen + hub.state.cdn_seen)


def test_private_repo_with_the_token_file_hf_auth_login_writes(hub, tmp_path):
    hub.state.tokens.add("hf_from_file")
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("hf_from_file\n")
    pull(_store(), config.reference("hf.co/acme/Private-GGUF:Q4_K_M"))
    assert _weights("hf.co/acme/Private-GGUF:Q4_K_M") == hub.files["Tiny-Model-Q8_0.gguf"]


def test_the_env_token_wins_over_the_file(hub, tmp_path, monkeypatch):
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("hf_file")
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    token = huggingface.find_token()
    assert (token.value, token.source) == ("hf_env", "HF_TOKEN") and "hf_env" not in repr(token)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert huggingface.find_token() is None


def test_the_token_never_goes_to_another_registry(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    other = client_for(parse_reference("localhost:5000/acme/tiny"))
    try:
        assert other.auth.header(()) is None and type(other).__name__ == "RegistryClient"
    finally:
        other.close()


# ---------------------------------------------------------------------------------------------------------
# refusals: one line each, nothing written


def _refused(hub, name: str, error: type):
    with pytest.raises(error) as e:
        pull(_store(), config.reference(name))
    assert "\n" not in str(e.value.message)
    assert _store().refs() == [] if _store().root.exists() else True
    assert not hub.state.cdn_seen  # nothing was downloaded
    return e.value


def test_sharded_tag_is_one_line(hub):
    error = _refused(hub, f"hf.co/{REPO}:F16", InvalidInputError)
    assert error.message == f"hf.co/{REPO}:F16: {SHARDED}"
    assert error.hint == "pick a single-file quantization tag of this repository"


def test_unknown_quant_is_not_found(hub):
    error = _refused(hub, f"hf.co/{REPO}:Q3_K_S", NotFoundError)
    assert error.message == f"model not found: hf.co/{REPO}:Q3_K_S (Hugging Face: {NO_TAG})"


def test_repo_without_ggufs_is_not_found(hub):
    error = _refused(hub, "hf.co/acme/safetensors-only", NotFoundError)
    assert NOT_GGUF in error.message


def test_refused_token_says_so(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    error = _refused(hub, f"hf.co/{REPO}:Q4_K_M", AuthError)
    assert error.message == f"Hugging Face refused the token (HF_TOKEN) for hf.co/{REPO}:Q4_K_M"
    assert "hf_revoked" not in error.message + (error.hint or "")
    assert len(hub.state.hub_seen) == 1  # a refused token is not sent again


def test_private_repo_without_a_token_asks_for_one(hub):
    error = _refused(hub, "hf.co/acme/Private-GGUF", AuthError)
    assert "needs a Hugging Face login" in error.message and "HF_TOKEN" in error.hint


def test_push_to_hugging_face_is_refused(hub, tiny_model):
    tiny_model("tiny")
    runner = CliRunner()
    assert runner.invoke(cli, ["cp", "tiny", f"hf.co/{REPO}:mine"]).exit_code == 0
    result = runner.invoke(cli, ["push", f"hf.co/{REPO}:mine"])
    assert result.exit_code == 3, result.output
    assert "cannot be pushed to" in result.output and "Traceback" not in result.output


def test_cli_pull_prints_the_sharded_refusal_as_one_line(hub):
    result = CliRunner().invoke(cli, ["pull", f"hf.co/{REPO}:f16"])
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert lines == [f"Error: hf.co/{REPO}:f16: {SHARDED}"]


def test_plain_http_endpoint_off_loopback_is_refused(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://hf-mirror.example")
    with pytest.raises(InvalidInputError, match="HF_ENDPOINT uses plain http"):
        client_for(parse_reference(f"hf.co/{REPO}"))
