"""Every weight layout a peer writes: split GGUFs, weights in tars (ModelPack ``weight.v1.tar`` plain, gzip,
zstd), safetensors models (Ollama's tensor layers, ModelPack and KitOps), projector (mmproj) layers.

Split sets are written with the ``gguf`` package's own writer (``GGUFWriter(split_max_tensors=...)``, which
names and heads the shards as llama.cpp's gguf-split does); the runnable one is Gemma 3 270M rewritten into
shards. Artifacts of other tools are pushed by hand (``artifacts.publish``) to the real registry and pulled
with modelpkg; bad input is one line each and leaves no name behind.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from artifacts import member, publish, publish_kitops, tar_bytes
from modelpkg.base import config
from modelpkg.cli.app import cli
from modelpkg.core import mediatypes as mt
from modelpkg.core.digest import Digest
from modelpkg.store import Store

pytestmark = [pytest.mark.timeout(300)]

GGUF_ONLY = "llama.cpp runs GGUF only"


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def store() -> Store:
    return Store(config.home())


def show(name: str) -> dict:
    result = run("show", name, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def one_line(result) -> str:
    """The error a failed command printed: exactly one ``Error:`` line (a hint may follow), no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert lines and lines[0].startswith("Error: ") and len([x for x in lines if x.startswith("Error")]) == 1, lines
    return lines[0]


def nothing_stored(s: Store) -> bool:
    blobs = s.root / "blobs" / "sha256"
    return s.refs() == [] and (not blobs.exists() or not any(blobs.iterdir()))


def write_split(path: Path, *, shards: int, per_shard: int = 1, seed: int = 0, arch: str = "llama") -> list[Path]:
    """A small split GGUF: ``shards`` files of ``per_shard`` tensors each, named and headed by gguf's writer."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch, split_max_tensors=per_shard)
    writer.add_type("model")
    writer.add_name(f"split-{seed}")
    writer.add_file_type(1)
    writer.add_context_length(256)
    rng = np.random.default_rng(seed)
    for n in range(shards * per_shard):
        writer.add_tensor(f"blk.{n}.weight", rng.standard_normal(64).astype(np.float16))
    names = writer.format_shard_names(path)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return names


def resplit(source: Path, path: Path, max_tensors: int) -> list[Path]:
    """``source`` (a whole GGUF) rewritten as a split set: every key and tensor copied, as gguf-split does."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(path), arch, split_max_tensors=max_tensors)
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "split.")) or key == "general.architecture":
            continue
        kind = field.types[0]
        writer.add_key_value(key, field.contents(), kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    names = writer.format_shard_names(path)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return names


def create(name: str, folder: Path, from_: str):
    modelfile = folder / f"{name}.Modelfile"
    modelfile.write_text(f"FROM {from_}\n")
    return run("create", name, "-f", str(modelfile))


@pytest.fixture
def split3(tmp_path) -> list[Path]:
    folder = tmp_path / "split"
    folder.mkdir()
    return write_split(folder / "tiny.gguf", shards=3)


# ---------------------------------------------------------------------------------------------------------
# the model view (pure): which layer is a shard, a projector, safetensors


def _layer(title: str | None, media_type: str = mt.MODELPACK_WEIGHT, data: bytes | None = None):
    from modelpkg.core.manifest import Descriptor

    digest = Digest.of(data if data is not None else (title or media_type).encode())
    return Descriptor(media_type, digest, 1, {mt.TITLE: title} if title else {})


def test_the_model_view_tells_shards_from_projectors_and_safetensors():
    from modelpkg.core.manifest import Manifest, model_layers, split_name, split_problem

    assert split_name("dir/Qwen3-00002-of-00003.gguf") == ("Qwen3", 2, 3)
    assert split_name("x-00004-of-00003.gguf") is None and split_name("x-00001-of-00001.gguf") is None
    assert split_name("model.gguf") is None and split_name(None) is None

    def view(*layers):
        return model_layers(Manifest(mt.OCI_MANIFEST, _layer("config"), tuple(layers)))

    v = view(_layer("m-00002-of-00002.gguf"), _layer("mmproj-m-f16.gguf"), _layer("m-00001-of-00002.gguf"))
    assert [s.title for s in v.shards] == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    assert v.model == v.shards[0] and [p.title for p in v.projectors] == ["mmproj-m-f16.gguf"]
    assert v.format == "gguf" and split_problem(v) is None
    v = view(_layer("m-00001-of-00003.gguf"), _layer("m-00003-of-00003.gguf"))
    assert split_problem(v) == "shard 2 of 3 (m-00002-of-00003.gguf) is missing"
    dmr = view(_layer(None, mt.DMR_GGUF, b"a"), _layer(None, mt.DMR_GGUF, b"b"), _layer(None, mt.DMR_MMPROJ, b"c"))
    assert [s.digest for s in dmr.shards] == [Digest.of(b"a"), Digest.of(b"b")] and len(dmr.projectors) == 1
    v = view(_layer("model.gguf"), _layer("other.gguf"))  # an ORAS artifact of two GGUFs: as before
    assert v.shards == () and [p.title for p in v.projectors] == ["other.gguf"]
    v = view(_layer(None, "application/vnd.ollama.image.tensor; name=w; dtype=BF16"), _layer("model.safetensors"))
    assert v.model is None and len(v.tensors) == 2 and v.format == "safetensors"


# ---------------------------------------------------------------------------------------------------------
# split GGUFs: create, show, export


def test_the_test_split_set_is_named_and_headed_as_gguf_split_writes_it(split3):
    from modelpkg.runtime import ggufmeta

    assert [p.name for p in split3] == [f"tiny-0000{n}-of-00003.gguf" for n in (1, 2, 3)]
    heads = [ggufmeta.read_info(p).metadata for p in split3]
    assert [(h["split.no"], h["split.count"], h["split.tensors.count"]) for h in heads] == [
        (0, 3, 3), (1, 3, 3), (2, 3, 3)]
    assert heads[0]["general.architecture"] == "llama" and "general.architecture" not in heads[1]


@pytest.mark.parametrize("from_", ["first shard", "folder"])
def test_create_takes_every_shard_in_order_titled_with_its_name(home, split3, tmp_path, from_):
    target = str(split3[0]) if from_ == "first shard" else str(split3[0].parent)
    result = create("tiny-split", tmp_path, target)
    assert result.exit_code == 0, result.stderr
    _, manifest = store().manifest(config.reference("tiny-split"))
    weights = [layer for layer in manifest.layers if layer.annotations.get(mt.ROLE) == "model"]
    assert [w.annotations[mt.TITLE] for w in weights] == [p.name for p in split3]
    assert [str(w.digest) for w in weights] == ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
                                                for p in split3]
    assert all(w.media_type == mt.MODELPACK_WEIGHT for w in weights)

    shown = show("tiny-split")
    assert [s["title"] for s in shown["shards"]] == [p.name for p in split3]
    assert shown["architecture"] == "llama" and shown["format"] == "gguf"
    assert shown["model_path"].endswith(weights[0].digest.hex)
    text = run("show", "tiny-split").stdout
    assert "Shards" in text and all(p.name in text for p in split3) and "3 GGUF files" in text

    out = tmp_path / "exported"
    result = run("export", "tiny-split", str(out))
    assert result.exit_code == 0, result.stderr
    for p in split3:
        assert (out / p.name).read_bytes() == p.read_bytes()
    assert not (out / "model.gguf").exists()


def test_create_from_a_split_model_in_the_store_keeps_its_shards(home, split3, tmp_path):
    assert create("tiny-split", tmp_path, str(split3[0])).exit_code == 0
    result = create("tiny-split-2", tmp_path, "tiny-split")
    assert result.exit_code == 0, result.stderr
    assert [s["title"] for s in show("tiny-split-2")["shards"]] == [p.name for p in split3]


def test_a_missing_shard_is_one_line_and_nothing_is_written(home, split3, tmp_path):
    split3[1].unlink()
    for target in (split3[0], split3[0].parent):
        result = create("tiny-split", tmp_path, str(target))
        assert result.exit_code == 3
        line = one_line(result)
        assert "shard 2 of 3" in line and "tiny-00002-of-00003.gguf" in line
        assert nothing_stored(store())


def test_a_shard_of_another_split_set_is_refused(home, split3, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    foreign = write_split(other / "tiny.gguf", shards=3, per_shard=2, seed=7)  # same names, 6 tensors
    split3[1].write_bytes(foreign[1].read_bytes())
    result = create("tiny-split", tmp_path, str(split3[0]))
    assert result.exit_code == 3
    assert "not one split" in one_line(result)
    assert nothing_stored(store())

    four = write_split(other / "four.gguf", shards=4, seed=8)
    split3[1].write_bytes(four[1].read_bytes())  # a shard of a 4-file split under a 3-file name
    result = create("tiny-split", tmp_path, str(split3[0]))
    assert result.exit_code == 3
    assert "is not shard 2 of 3: its header says shard 2 of 4" in one_line(result)
    assert nothing_stored(store())


def test_from_a_later_shard_names_the_first(home, split3, tmp_path):
    result = create("tiny-split", tmp_path, str(split3[2]))
    assert result.exit_code == 3
    assert "is shard 3 of 3 of a split GGUF; FROM takes the first one" in one_line(result)
    assert "tiny-00001-of-00003.gguf" in result.stderr
    assert nothing_stored(store())


# ---------------------------------------------------------------------------------------------------------
# split GGUFs: pull from ModelPack and Docker Model Runner manifests


def _shard_layers(paths: list[Path], media_type: str, titled: bool) -> list[tuple]:
    return [(media_type, p.read_bytes(), {mt.MODELPACK_FILEPATH: p.name} if titled else {}) for p in paths]


@pytest.mark.registry
def test_pull_keeps_the_shards_of_modelpack_and_dmr_manifests(registry, home, split3, tmp_path):
    modelpack_config = json.dumps({"config": {"format": "gguf"}, "modelfs": {"type": "layers", "diffIds": []}})
    layers = _shard_layers(split3, mt.MODELPACK_WEIGHT, True)
    scrambled = [layers[2], layers[0], layers[1]]  # order comes from the names, not the manifest
    pack = publish(registry, "acme/split-pack", "v1", (mt.MODELPACK_CONFIG, modelpack_config.encode()), scrambled,
                   artifact_type=mt.MODELPACK_ARTIFACT)
    dmr = publish(registry, "ai/split-dmr", "v1", (mt.DMR_CONFIG, b'{"config":{"format":"gguf"}}'),
                  _shard_layers(split3, mt.DMR_GGUF, False))  # untitled: DMR's layers in manifest order
    digests = ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in split3]
    for name in (pack, dmr):
        result = run("pull", name)
        assert result.exit_code == 0, result.stderr
        shown = show(name)
        assert [s["digest"] for s in shown["shards"]] == digests
        assert shown["projectors"] == [] and shown["architecture"] == "llama"
        from modelpkg.ops.models import describe

        details = describe(store(), config.reference(name))
        assert [p.name for p in details.shard_paths] == [d.split(":")[1] for d in digests]
    assert [s["title"] for s in show(pack)["shards"]] == [p.name for p in split3]

    out = tmp_path / "exported"
    assert run("export", pack, str(out)).exit_code == 0
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".gguf") == [p.name for p in split3]


@pytest.mark.registry
def test_a_manifest_missing_a_shard_is_refused_before_any_download(registry, home, split3):
    name = publish(registry, "acme/split-short", "v1", (mt.MODELPACK_CONFIG, b"{}"),
                   _shard_layers([split3[0], split3[2]], mt.MODELPACK_WEIGHT, True))
    result = run("pull", name)
    assert result.exit_code == 3
    assert "shard 2 of 3 (tiny-00002-of-00003.gguf) is missing" in one_line(result)
    assert nothing_stored(store())


@pytest.mark.registry
def test_a_shard_whose_bytes_do_not_match_its_digest_is_refused(registry, fault_proxy, home, split3):
    publish(registry, "acme/split-bad", "v1", (mt.MODELPACK_CONFIG, b"{}"),
            _shard_layers(split3, mt.MODELPACK_WEIGHT, True))
    proxy = fault_proxy(registry)
    digest = hashlib.sha256(split3[1].read_bytes()).hexdigest()
    proxy.add("corrupt", "GET", f"/blobs/sha256:{digest}", count=None, offset=100, length=2)
    result = run("pull", f"{proxy.host}/acme/split-bad:v1")
    assert result.exit_code == 5
    line = one_line(result)
    assert digest[:12] in line or "digest" in line
    assert store().refs() == []


# ---------------------------------------------------------------------------------------------------------
# weights in tars: ModelPack weight.v1.tar, +gzip, +zstd


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=1).compress(data)


def _pack_tar(registry, repo: str, suffix: str, tar: bytes) -> str:
    body = {"": lambda b: b, "+gzip": lambda b: __import__("gzip").compress(b, mtime=0), "+zstd": _zstd}[suffix](tar)
    return publish(registry, repo, "v1", (mt.MODELPACK_CONFIG, b'{"config":{"format":"gguf"}}'), [
        (mt.MODELPACK_WEIGHT_TAR + suffix, body, {mt.MODELPACK_FILEPATH: "tiny.gguf"}),
    ], artifact_type=mt.MODELPACK_ARTIFACT)


@pytest.mark.registry
@pytest.mark.parametrize("suffix", ["", "+gzip", "+zstd"])
def test_a_modelpack_weight_tar_has_its_gguf_streamed_out(registry, home, tiny_gguf, tmp_path, suffix):
    data = tiny_gguf.read_bytes()
    name = _pack_tar(registry, f"acme/pack-tar{suffix.replace('+', '-')}", suffix,
                     tar_bytes([(member("tiny.gguf"), data)]))
    result = run("pull", name)
    assert result.exit_code == 0, result.stderr
    shown = show(name)
    assert shown["architecture"] == "llama" and shown["format"] == "gguf"  # the bug: an empty Model section
    assert Path(shown["model_path"]).read_bytes() == data
    assert Path(shown["model_path"]).name == hashlib.sha256(data).hexdigest()
    assert "architecture" in run("show", name).stdout
    out = tmp_path / "exported"
    assert run("export", name, str(out)).exit_code == 0
    assert (out / "model.gguf").read_bytes() == data


@pytest.mark.registry
@pytest.mark.parametrize("bad, why", [
    (member("../evil.gguf"), "unsafe path"),
    (member("/abs/evil.gguf"), "unsafe path"),
    (member("w/tiny.gguf", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
])
def test_a_hostile_modelpack_weight_tar_is_refused(registry, home, tiny_gguf, bad, why):
    data = None if bad.type == tarfile.SYMTYPE else b"GGUF"
    name = _pack_tar(registry, "acme/pack-evil", "+zstd",
                     tar_bytes([(bad, data), (member("tiny.gguf"), tiny_gguf.read_bytes())]))
    result = run("pull", name)
    assert result.exit_code == 3
    line = one_line(result)
    assert "model tar layer" in line and "refused" in line and why in line
    assert store().refs() == []
    assert not (Path(config.home()) / "evil.gguf").exists() and not Path("/abs/evil.gguf").exists()


@pytest.mark.registry
def test_a_damaged_zstd_weight_tar_is_one_line(registry, home):
    name = publish(registry, "acme/pack-junk", "v1", (mt.MODELPACK_CONFIG, b"{}"), [
        (mt.MODELPACK_WEIGHT_TAR + "+zstd", b"\x28\xb5\x2f\xfd" + b"junk" * 100, {mt.MODELPACK_FILEPATH: "m.gguf"})])
    result = run("pull", name)
    assert result.exit_code == 3
    assert "refused" in one_line(result)
    assert store().refs() == []


# ---------------------------------------------------------------------------------------------------------
# safetensors models: kept, listed, shown; run says what to do


def _safetensors(tensors: dict[str, int]) -> bytes:
    """A minimal real safetensors file (8-byte header length, JSON header, F32 data)."""
    header, offset = {}, 0
    for name, count in tensors.items():
        header[name] = {"dtype": "F32", "shape": [count], "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(offset)


def _ollama_tensor_model(registry) -> str:
    cfg = (b'{"model_format":"safetensors","model_family":"qwen3","model_families":["qwen3"],'
           b'"model_type":"0.6B","file_type":"BF16","architecture":"amd64","os":"linux"}\n')
    session = requests.Session()
    from artifacts import descriptor
    from registry_env import push_manifest

    layers = []
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        layer = descriptor(session, registry, "library/tensors", "application/vnd.ollama.image.tensor",
                           _safetensors({name: 16}))
        layers.append({**layer, "name": name, "dtype": "F32", "shape": [16]})
    doc = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
           "config": descriptor(session, registry, "library/tensors", mt.DOCKER_CONFIG, cfg),
           "layers": layers + [descriptor(session, registry, "library/tensors", mt.OLLAMA_TEMPLATE, b"{{ .Prompt }}")]}
    push_manifest(session, registry.url, "library/tensors", "v1", json.dumps(doc).encode(), mt.DOCKER_MANIFEST)
    return f"{registry.host}/library/tensors:v1"


@pytest.mark.registry
def test_safetensors_models_are_kept_shown_and_run_says_what_to_do(registry, home):
    ollama = _ollama_tensor_model(registry)
    pack = publish(registry, "acme/st-pack", "v1", (mt.MODELPACK_CONFIG, json.dumps(
        {"config": {"architecture": "qwen3", "format": "safetensors"}}).encode()), [
        (mt.MODELPACK_WEIGHT, _safetensors({"w": 8}), {mt.MODELPACK_FILEPATH: "model.safetensors"}),
        (mt.MODELPACK_WEIGHT_CONFIG, b"{}", {mt.MODELPACK_FILEPATH: "config.json"}),
    ], artifact_type=mt.MODELPACK_ARTIFACT)
    kit = publish_kitops(registry, "acme/st-kit", tar_bytes([(member("model/model.safetensors"),
                                                              _safetensors({"w": 8}))]), True)
    for name in (ollama, pack, kit):
        result = run("pull", name)
        assert result.exit_code == 0, result.stderr
        shown = show(name)
        assert shown["format"] == "safetensors" and shown["model_path"] is None, name
        assert "safetensors" in run("show", name).stdout
        result = run("run", name, "hi")
        assert result.exit_code == 10, result.output
        line = one_line(result)
        assert GGUF_ONLY in line and "safetensors" in line
        assert "convert_hf_to_gguf.py" in result.stderr
    assert show(ollama)["architecture"] == "qwen3" and show(pack)["architecture"] == "qwen3"
    # the KitOps tar was read once: recorded as its own derived blob, so an unchanged pull does not read it again
    (tar_layer, made), = store().resolve(config.reference(kit)).derived
    assert made == tar_layer
    assert run("pull", kit).exit_code == 0 and show(kit)["format"] == "safetensors"
    listed = run("list").stdout
    assert all(n.split("/", 1)[1] in listed for n in (ollama, pack, kit))


# ---------------------------------------------------------------------------------------------------------
# projectors


@pytest.mark.registry
def test_projector_layers_are_kept_shown_and_exported_with_their_titles(registry, home, tiny_gguf, tmp_path):
    from conftest import make_gguf

    projector = make_gguf(tmp_path / "mmproj-tiny-f16.gguf", arch="clip", model_type="mmproj", seed=3).read_bytes()
    data = tiny_gguf.read_bytes()
    pack = publish(registry, "acme/vision-pack", "v1", (mt.MODELPACK_CONFIG, b'{"config":{"format":"gguf"}}'), [
        (mt.MODELPACK_WEIGHT, data, {mt.MODELPACK_FILEPATH: "tiny.gguf"}),
        (mt.MODELPACK_WEIGHT, projector, {mt.MODELPACK_FILEPATH: "mmproj-tiny-f16.gguf"}),
    ], artifact_type=mt.MODELPACK_ARTIFACT)
    dmr = publish(registry, "ai/vision-dmr", "v1", (mt.DMR_CONFIG, b'{"config":{"format":"gguf"}}'), [
        (mt.DMR_GGUF, data), (mt.DMR_MMPROJ, projector, {mt.MODELPACK_FILEPATH: "mmproj-tiny-f16.gguf"})])
    digest = "sha256:" + hashlib.sha256(projector).hexdigest()
    for name in (pack, dmr):
        assert run("pull", name).exit_code == 0
        shown = show(name)
        assert [(p["title"], p["digest"]) for p in shown["projectors"]] == [("mmproj-tiny-f16.gguf", digest)]
        assert shown["shards"] == [] and Path(shown["model_path"]).read_bytes() == data
        text = run("show", name).stdout
        assert "Projector" in text and "mmproj-tiny-f16.gguf" in text
        out = tmp_path / name.replace("/", "_").replace(":", "_")
        assert run("export", name, str(out)).exit_code == 0
        assert (out / "mmproj-tiny-f16.gguf").read_bytes() == projector

    # a model created FROM it keeps the projector under its name
    (tmp_path / "Modelfile").write_text(f"FROM {pack}\nSYSTEM hi\n")
    assert run("create", "vision-copy", "-f", str(tmp_path / "Modelfile")).exit_code == 0
    assert [p["title"] for p in show("vision-copy")["projectors"]] == ["mmproj-tiny-f16.gguf"]


# ---------------------------------------------------------------------------------------------------------
# the real model: a split Gemma and a zstd weights tar of Gemma run as the created model does

PROMPT = "Here is a list of three primary colors:\n1."
ARGS = ["--temperature", "0", "--seed", "42", "--num-predict", "12"]


@pytest.fixture(scope="module")
def gemma_split(gemma_gguf, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("gemma-split")
    return resplit(gemma_gguf, folder / "gemma3-270m-q4_k_m.gguf", max_tensors=100)  # 236 tensors: 3 shards


@pytest.mark.model
def test_a_split_gemma_runs_from_the_blobs_like_the_whole_one(home, gemma_gguf, gemma_split, tmp_path):
    assert len(gemma_split) == 3
    assert create("gemma", tmp_path, str(gemma_gguf)).exit_code == 0
    result = create("gemma-split", tmp_path, str(gemma_split[0].parent))
    assert result.exit_code == 0, result.stderr
    from modelpkg.ops.models import describe

    details = describe(store(), config.reference("gemma-split"))
    assert len(details.shard_paths) == 3 and all(p.parent == store().blob_path(details.digest).parent
                                                  for p in details.shard_paths)
    assert all("-of-" not in p.name for p in details.shard_paths)  # blob names: digests, no shard names
    shown = show("gemma-split")
    assert (shown["architecture"], shown["parameter_size"]) == (show("gemma")["architecture"],
                                                                show("gemma")["parameter_size"])

    expected = run("run", "gemma", PROMPT, *ARGS)
    assert expected.exit_code == 0 and expected.stdout.strip()
    got = run("run", "gemma-split", PROMPT, *ARGS)
    assert got.exit_code == 0, got.stderr
    assert got.stdout == expected.stdout

    # serve: each model in its own runner process, loaded the same way
    from modelpkg.server.app import make_server

    server = make_server(store(), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/generate"
        answers = [requests.post(url, json={"model": m, "prompt": PROMPT, "stream": False, "raw": True,
                                            "options": {"temperature": 0, "seed": 42, "num_predict": 12}},
                                 timeout=240).json() for m in ("gemma", "gemma-split")]
    finally:
        server.shutdown()
        server.close()
    assert answers[0]["response"] and answers[1]["response"] == answers[0]["response"], answers


@pytest.mark.model
@pytest.mark.registry
def test_gemma_in_a_zstd_modelpack_tar_runs_like_the_created_model(registry, home, gemma_gguf, tmp_path):
    assert create("gemma", tmp_path, str(gemma_gguf)).exit_code == 0
    name = _pack_tar(registry, "acme/gemma-zstd", "+zstd", tar_bytes([(member("gemma.gguf"), gemma_gguf.read_bytes())]))
    assert run("pull", name).exit_code == 0
    expected = run("run", "gemma", PROMPT, *ARGS)
    got = run("run", name, PROMPT, *ARGS)
    assert got.exit_code == 0, got.stderr
    assert got.stdout == expected.stdout and got.stdout.strip()


@pytest.mark.model
def test_shards_under_digest_names_load_only_through_the_splits_loader(gemma_split, tmp_path):
    """Blob files have no shard names: llama.cpp's own lookup fails on them, the shard list in order loads,
    and a list out of order is refused by llama.cpp (it checks each shard's split.no)."""
    import shutil

    from modelpkg.core.errors import RunnerError
    from modelpkg.runtime.runner import Runner, effective_parameters, load_options

    blobs = []
    for path in gemma_split:
        blob = tmp_path / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        blobs.append(blob)
    params = effective_parameters({"num_ctx": 256})
    with pytest.raises(RunnerError, match="cannot load"):
        Runner.load(load_options(params, blobs[0]))
    with pytest.raises(RunnerError, match="cannot load"):
        Runner.load(load_options(params, blobs[0], shard_paths=[blobs[0], blobs[2], blobs[1]]))
    runner = Runner.load(load_options(params, blobs[0], shard_paths=blobs))
    try:
        assert runner.n_ctx == 256 and runner.tokenize("hello")
    finally:
        runner.close()


@pytest.mark.registry
def test_a_split_model_pushes_as_modelpack_or_docker_with_its_shards_and_not_as_ollama(registry, home, split3,
                                                                                       tmp_path):
    assert create("tiny-split", tmp_path, str(split3[0])).exit_code == 0
    for fmt, repo in (("docker", "ai/split-out"), ("modelpack", "acme/split-out")):
        name = f"{registry.host}/{repo}:v1"
        assert run("cp", "tiny-split", name).exit_code == 0
        result = run("push", "--format", fmt, name)
        assert result.exit_code == 0, result.stderr
        raw = requests.get(f"{registry.url}/v2/{repo}/manifests/v1", timeout=10,
                           headers={"Accept": mt.OCI_MANIFEST}).json()
        titles = [layer.get("annotations", {}).get(mt.MODELPACK_FILEPATH) for layer in raw["layers"]]
        assert titles[:3] == [p.name for p in split3], (fmt, titles)
        assert run("rm", name).exit_code == 0
        assert run("pull", name).exit_code == 0
        assert [s["title"] for s in show(name)["shards"]] == [p.name for p in split3]
    name = f"{registry.host}/library/split-out:v1"
    assert run("cp", "tiny-split", name).exit_code == 0
    result = run("push", "--format", "ollama", name)
    assert result.exit_code == 3
    assert "Ollama's format has no place for a split GGUF (3 shards)" in one_line(result)
