"""Hostile GGUF files and non-regular files through the commands and the server (issue 17).

A model whose weights carry hostile metadata (a vocabulary claiming 2^60 tokens, arrays nested 5000 deep) can
reach the store without ``create`` (a pull of an ORAS-style artifact, whose config says nothing about the
weights, so ``show`` and ``/api/tags`` read the GGUF); such a model must not make ``list``, ``show``,
``/api/tags``, ``/api/show`` or ``/api/create`` hang or fail for the other models. ``create`` from such a file,
or from a FIFO or a device, ends at once with one error line. Every call runs in a thread with a time limit
(``within``), so a regression fails instead of hanging the suite; the files are the replayed corpus of
tests/runtime/gguf_corpus/.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core import mediatypes as mt
from modelpkg.core.manifest import Descriptor, canonical_json
from modelpkg.store import Store
from timebox import within

CORPUS = Path(__file__).resolve().parents[1] / "runtime" / "gguf_corpus"
LIMIT = 20.0  # seconds before "it hangs": these answer in well under one


def _stored_weights_only(store: Store, name: str, weights: bytes) -> None:
    """A model as an ORAS push makes it: an empty config, one GGUF layer (so readers look into the GGUF)."""
    with store.session() as pins:
        empty = Descriptor(mt.OCI_EMPTY, store.put_bytes(b"{}", pins), 2)
        layer = Descriptor(mt.MODELPACK_WEIGHT, store.put_bytes(weights, pins), len(weights))
        manifest = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": empty.to_json(),
                                   "layers": [layer.to_json()]})
        store.tag(config.reference(name), manifest, mt.OCI_MANIFEST, pins)


@pytest.fixture
def hostile_store(home, tiny_gguf):
    """The store of ``home`` with a good model (``good``, created) and two hostile ones beside it."""
    store = Store(config.home())
    _stored_weights_only(store, "vocab", (CORPUS / "string_array_2pow60.gguf").read_bytes())
    _stored_weights_only(store, "deep", (CORPUS / "nested_5000.gguf").read_bytes())
    modelfile = tiny_gguf.parent / "Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\n")
    assert CliRunner().invoke(cli, ["create", "good", "-f", str(modelfile)]).exit_code == 0
    return store


def _cli(*args):
    return within(LIMIT, CliRunner().invoke, cli, list(args))


def test_list_and_show_answer_with_a_hostile_model_in_the_store(hostile_store):
    listed = _cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert sorted(m["name"] for m in json.loads(listed.stdout)) == ["deep:latest", "good:latest", "vocab:latest"]
    for name in ("vocab", "deep"):
        shown = _cli("show", name, "--json")
        assert shown.exit_code == 0, shown.output  # the GGUF's fields are left out, the rest is shown
        details = json.loads(shown.stdout)
        assert details["name"] == f"{name}:latest" and details["architecture"] == ""
    good = json.loads(_cli("show", "good", "--json").stdout)
    assert good["architecture"] == "llama"


@pytest.mark.parametrize("name", ["string_array_2pow60", "nested_5000", "string_length_2pow62"])
def test_create_from_a_hostile_gguf_is_one_error_line(home, tmp_path, name):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {CORPUS / name}.gguf\n")
    result = _cli("create", "bad", "-f", str(modelfile))
    assert result.exit_code == 3, result.output  # InvalidInputError, not 70 (an internal error)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "is not a valid GGUF file" in errors[0], result.output
    assert "Traceback" not in result.output
    assert json.loads(_cli("list", "--json").stdout) == []


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "model.gguf"
    os.mkfifo(path)
    yield path
    try:  # a regression's reader blocked on it gets a writer and an end, so its thread ends
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.parametrize("flags", [[], ["--link"]])
def test_create_from_a_fifo_or_a_device_ends_at_once(home, tmp_path, fifo, flags):
    for source, kind in ((fifo, "is a FIFO"), ("/dev/zero", "is a character device")):
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(f"FROM {source}\n")
        result = _cli("create", "bad", "-f", str(modelfile), *flags)
        assert result.exit_code == 3 and kind in result.output, result.output


@pytest.fixture
def served(hostile_store):
    from modelpkg.server.app import make_server

    server = make_server(hostile_store, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.close()


def test_the_server_answers_with_a_hostile_model_in_the_store(served):
    tags = requests.get(served.url + "/api/tags", timeout=LIMIT)
    assert tags.status_code == 200
    assert sorted(m["name"] for m in tags.json()["models"]) == ["deep:latest", "good:latest", "vocab:latest"]
    for name in ("vocab", "deep"):
        shown = requests.post(served.url + "/api/show", json={"model": name}, timeout=LIMIT)
        assert shown.status_code == 200, shown.text
    assert requests.post(served.url + "/api/show", json={"model": "good"}, timeout=LIMIT).status_code == 200


def test_api_create_from_a_hostile_model_or_a_fifo_ends_with_an_error(served, fifo):
    for modelfile in ("FROM vocab\n", "FROM deep\n", f"FROM {fifo}\n"):
        made = requests.post(served.url + "/api/create", json={"model": "copy", "modelfile": modelfile,
                                                               "stream": False}, timeout=LIMIT)
        assert 400 <= made.status_code < 500, (modelfile, made.status_code, made.text)
        assert "\n" not in made.json()["error"]
    assert requests.get(served.url + "/api/tags", timeout=LIMIT).status_code == 200
