"""Hand-made artifacts of other tools' dialects, pushed to the test registry with plain ``requests``
(not modelpkg's client): Ollama, Docker Model Runner, ORAS and KitOps shapes, and tar layers for them."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import requests

from modelpkg.core import mediatypes as mt
from registry_env import push_blob, push_manifest


def descriptor(session, registry, repo: str, media_type: str, data: bytes, annotations: dict | None = None) -> dict:
    out = {"mediaType": media_type, "digest": push_blob(session, registry.url, repo, data), "size": len(data)}
    if annotations:
        out["annotations"] = annotations
    return out


def publish(registry, repo: str, tag: str, config: tuple[str, bytes], layers: list[tuple], *,
            media_type: str = mt.OCI_MANIFEST, artifact_type: str | None = None) -> str:
    """Push blobs and a manifest by hand; ``layers`` are (media type, bytes[, annotations])."""
    session = requests.Session()
    doc = {"schemaVersion": 2, "mediaType": media_type,
           "config": descriptor(session, registry, repo, *config),
           "layers": [descriptor(session, registry, repo, *layer) for layer in layers]}
    if artifact_type:
        doc["artifactType"] = artifact_type
    push_manifest(session, registry.url, repo, tag, json.dumps(doc).encode(), media_type)
    return f"{registry.host}/{repo}:{tag}"


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buffer.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


KITFILE = {"manifestVersion": "1.0.0", "package": {"name": "tiny", "version": "1.0.0"},
           "model": {"name": "tiny", "path": "models/tiny.gguf", "license": "Apache-2.0"}}


def publish_kitops(registry, repo: str, model_tar: bytes, compressed: bool) -> str:
    suffix = ".tar+gzip" if compressed else ".tar"
    docs = tar_bytes([(member("README.md"), b"# tiny\n")])
    return publish(registry, repo, "v1", (mt.KITOPS_CONFIG, json.dumps(KITFILE).encode()), [
        (f"application/vnd.kitops.modelkit.model.v1{suffix}", model_tar),
        ("application/vnd.kitops.modelkit.docs.v1.tar", docs),
    ])
