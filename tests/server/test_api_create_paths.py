"""``/api/create`` never reaches the server's own files (CVE-2024-39719 and the "model theft" chain).

A request names its weights and adapters only by the digest of a blob uploaded through ``/api/blobs`` or by
a model already in the store. Any path (absolute, relative to the server's folder or its working directory,
``~``, ``..``, a symlink, a folder, a ``file:`` URL) is refused before anything is read, with one error that is
the same whether the path exists or not, so the API cannot be asked "does this file exist?"; and no error the
API answers carries a path of the server's (the store, the config folder, the home folder).

A real server (``make_server``) on a loopback port, over a temporary store; plain ``requests`` as the client.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
import requests

from conftest import make_gguf
from modelpkg.base import config
from modelpkg.core.digest import Digest
from modelpkg.server.app import make_server
from modelpkg.server.backend import hide_paths
from modelpkg.store import Store

ZERO = "sha256:" + "0" * 64


@pytest.fixture
def server(home, tmp_path):
    store = Store(config.home())
    server = make_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.close()


class Api:
    """POSTs to the server, keeping every answer's body to search for server paths afterwards."""

    def __init__(self, url: str):
        self.url = url
        self.bodies: list[str] = []

    def post(self, path: str, body: dict | None = None, data: bytes | None = None) -> requests.Response:
        answer = requests.post(self.url + path, json=body, data=data, timeout=60)
        self.bodies.append(answer.text)
        return answer

    def get(self, path: str) -> requests.Response:
        answer = requests.get(self.url + path, timeout=60)
        self.bodies.append(answer.text)
        return answer

    def create(self, name: str, stream: bool | None = False, **fields) -> requests.Response:
        body = {"model": name, **fields}
        if stream is not None:
            body["stream"] = stream
        return self.post("/api/create", body)

    def upload(self, path) -> str:
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert self.post(f"/api/blobs/{digest}", data=data).status_code == 201
        return digest

    def models(self) -> set[str]:
        return {m["name"] for m in self.get("/api/tags").json()["models"]}


@pytest.fixture
def api(server):
    return Api(server.url)


def gguf(path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_gguf(path, **kwargs)


def error_of(answer: requests.Response) -> str:
    """The error text of an answer: the JSON body's, or a stream's last line's."""
    last = [line for line in answer.text.splitlines() if line.strip()][-1]
    return json.loads(last)["error"]


def test_every_path_is_refused_with_one_answer_whatever_exists(api, tmp_path, monkeypatch, home):
    outside = gguf(tmp_path / "outside" / "secret.gguf")           # a GGUF the server can read
    adapter = gguf(tmp_path / "outside-adapter" / "lora.gguf", model_type="adapter")
    os.symlink(outside, tmp_path / "link.gguf")
    user_home = tmp_path / "user"
    user_home.mkdir()
    os.link(outside, user_home / "secret.gguf")
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.chdir(tmp_path / "outside")                              # the server's working directory
    store = Store(config.home()).init()
    base = api.upload(outside)
    assert api.create("base", files={"model.gguf": base}).status_code == 200
    blob_file = store.blob_path(Digest.parse(base))
    before = api.models()
    modelfiles = {
        "an absolute path to a GGUF": f"FROM {outside}",
        "an absolute path that does not exist": f"FROM {tmp_path}/missing.gguf",
        "a folder holding one GGUF": f"FROM {outside.parent}",
        "a folder that does not exist": f"FROM {tmp_path}/missing-folder",
        "a symlink": f"FROM {tmp_path / 'link.gguf'}",
        "../ out of the store": "FROM ../outside/secret.gguf",
        "../ that goes nowhere": "FROM ../../../../nowhere/secret.gguf",
        "~/": "FROM ~/secret.gguf",
        "~/ missing": "FROM ~/missing.gguf",
        "~user/": "FROM ~root/secret.gguf",
        "relative to the working directory": "FROM secret.gguf",
        "./ relative": "FROM ./secret.gguf",
        "./ relative folder": "FROM .",
        "a file: URL": f"FROM file://{outside}",
        "a file: URL, one slash": f"FROM file:{outside}",
        "a blob file of the store by its path": f"FROM {blob_file}",
        "the store's index": f"FROM {store.root}/index.json",
        "ADAPTER with an absolute path": f"FROM base\nADAPTER {adapter}",
        "ADAPTER with a missing path": f"FROM base\nADAPTER {tmp_path}/missing-lora.gguf",
        "ADAPTER relative": "FROM base\nADAPTER ./secret.gguf",
        "a second FROM with a path": f"FROM base\nFROM {outside}",
        "DRAFT with a path": f"FROM base\nDRAFT {outside}",
    }
    answers = {}
    for label, text in modelfiles.items():
        for stream in (False, None):  # stream: false, and the default (a stream)
            answer = api.create(f"stolen-{len(answers)}", stream=stream, modelfile=text + "\n")
            answers[(label, stream)] = (answer.status_code, error_of(answer))
    for field in ({"from": str(outside)}, {"from": "./secret.gguf"}, {"from": "~/secret.gguf"},
                  {"from": f"{tmp_path}/missing.gguf"}):
        answer = api.create(f"stolen-{len(answers)}", **field)
        answers[(str(field), False)] = (answer.status_code, error_of(answer))
    assert len(set(answers.values())) == 1, answers   # one status, one text, for all of them
    status, text = next(iter(answers.values()))
    assert status == 400
    assert "blobs" in text and str(tmp_path) not in text
    assert api.models() == before                      # no model created
    assert not any(str(tmp_path) in body for body in api.bodies)


def test_from_an_uploaded_blob_or_a_store_model_works(api, tmp_path):
    model = gguf(tmp_path / "up" / "model.gguf")
    lora = gguf(tmp_path / "up" / "lora.gguf", model_type="adapter", seed=1)
    digest, adapter = api.upload(model), api.upload(lora)
    assert api.post(f"/api/blobs/{digest}", data=model.read_bytes()).status_code == 201  # again: fine
    made = {
        "by-files": {"files": {"model.gguf": digest}, "adapters": {"lora.gguf": adapter}},
        "by-digest": {"modelfile": f"FROM {digest}\nADAPTER {adapter}\nSYSTEM hi\n"},
        "by-at-digest": {"modelfile": f"FROM @{digest}\n"},  # the form older ollama CLIs sent
        "by-model": {"modelfile": "FROM by-digest\nPARAMETER top_k 3\n"},
        "by-from": {"from": "by-files", "system": "brief"},
    }
    for name, fields in made.items():
        answer = api.create(name, **fields)
        assert answer.status_code == 200 and answer.json() == {"status": "success"}, (name, answer.text)
    store = Store(config.home())
    for name in made:
        _, manifest = store.manifest(config.reference(name))
        assert str(manifest.layers[0].digest) == digest
    shown = api.post("/api/show", {"model": "by-model"}).json()
    assert "top_k" in shown["parameters"] and shown["system"] == "hi"
    streamed = api.create("streamed", stream=None, modelfile=f"FROM {digest}\n")
    assert json.loads(streamed.text.splitlines()[-1]) == {"status": "success"}
    assert {"by-files:latest", "by-model:latest", "streamed:latest"} <= api.models()


def test_missing_digests_and_names_say_so_without_a_server_path(api, home):
    answers = [
        api.create("a", files={"model.gguf": ZERO}),
        api.create("b", stream=None, files={"model.gguf": ZERO}),
        api.create("c", modelfile=f"FROM {ZERO}\n"),
        api.create("d", modelfile=f"FROM @{ZERO}\n"),
        api.create("e", modelfile="FROM no-such-model\n"),
    ]
    for answer in answers:
        text = error_of(answer)
        assert "no such blob" in text or "no model" in text, text
    base = gguf(home.parent / "m.gguf")
    assert api.create("base", files={"model.gguf": api.upload(base)}).status_code == 200
    answer = api.create("f", adapters={"lora.gguf": ZERO}, **{"from": "base"})
    assert "no such blob" in error_of(answer)
    not_gguf = api.post("/api/blobs/sha256:" + hashlib.sha256(b"text").hexdigest(), data=b"text")
    assert not_gguf.status_code == 201
    answer = api.create("g", files={"model.gguf": "sha256:" + hashlib.sha256(b"text").hexdigest()})
    assert answer.status_code == 400 and "GGUF" in error_of(answer)
    assert api.models() == {"base:latest"}
    assert not any(str(home) in body or str(home.resolve()) in body for body in api.bodies)


def test_file_names_in_files_must_be_relative(api):
    for name in ("/etc/model.gguf", "../model.gguf", "a/../../model.gguf", ""):
        answer = api.create("x", files={name: ZERO})
        assert (answer.status_code, error_of(answer)) == (400, "file path must be relative"), name


def test_store_errors_through_the_api_carry_no_server_path(api, home):
    store = Store(config.home()).init()
    store.index_path.write_text('{"manifests": 5}')   # every read of the names now fails with a StoreError
    answers = [api.get("/api/tags"), api.post("/api/show", {"model": "x"}),
               api.create("x", modelfile="FROM z\n"), api.create("y", stream=None, modelfile="FROM z\n")]
    for answer in answers:
        assert "not a valid OCI index" in error_of(answer), answer.text
        assert "<store>" in error_of(answer)
    assert not any(str(home) in body for body in api.bodies)


def test_config_file_errors_through_the_api_carry_no_server_path(api, tmp_path, monkeypatch):
    user_home = tmp_path / "user"
    (user_home / ".docker").mkdir(parents=True)
    (user_home / ".docker" / "config.json").write_text("{broken")
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    for stream in (False, True):  # credentials are looked up before any request: the error is the file's
        answer = api.post("/api/pull", {"model": "127.0.0.1:9/acme/x:v1", "insecure": True, "stream": stream})
        assert error_of(answer) == "~/.docker/config.json is not valid JSON", answer.text
    assert not any(str(tmp_path) in body for body in api.bodies)


def test_hide_paths_replaces_whole_paths_only():
    paths = [(Path("/srv/u/store"), "<store>"), (Path("/srv/u"), "~"), (Path("home"), "<x>"), (Path("/"), "<root>"),
             (None, "<none>")]
    text = "cannot read /srv/u/.docker/config.json, /srv/u/store/blobs or /srv/u; /srv/user2 and /srv/u2 stay"
    assert hide_paths(text, paths) == "cannot read ~/.docker/config.json, <store>/blobs or ~; /srv/user2 and " \
                                      "/srv/u2 stay"
    assert hide_paths("the home folder is /", paths) == "the home folder is /"
