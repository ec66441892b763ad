"""``import-hf`` and ``import-lmstudio``: GGUFs already on disk in other tools' folders, brought in without a copy.

The folders, as the tools lay them out:

- the Hugging Face hub cache (``config.hf_hub_cache()``: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, default
  ``~/.cache/huggingface/hub``; huggingface_hub's "Manage the cache" guide)::

      models--{user}--{repo}/blobs/<etag>                 the files' bytes
      models--{user}--{repo}/refs/main                    the commit the branch points at
      models--{user}--{repo}/snapshots/<commit>/<path>    relative symlinks into ../../blobs/

  The snapshot ``refs/main`` names is read (else the newest snapshot); every ``*.gguf`` in it, folders too;
- LM Studio's models folder (``~/.lmstudio/models``, else the older ``~/.cache/lm-studio/models``; its docs
  "Import Models": ``{publisher}/{model}/{file}.gguf``, publisher and model as on Hugging Face).

Each GGUF becomes ``hf.co/{user}/{repo}:{quant}``, the name ``pull`` would give it (the quantization read from
the file name as llama.cpp reads it, ``-Q4_K_M.gguf`` -> ``Q4_K_M``; else the file's stem). A link is followed
to its target; the target is reflinked into the store, else hard-linked (``allow_link``), else copied, and
hashed once on the way (``Store.adopt_file``); the model is then made as ``create`` makes it (``FROM
sha256:<digest>``), so its chat template is the GGUF's own. A name that already holds this very file (the
same inode) is left as it is, without reading the file again. Projector (``mmproj``) files and split GGUFs
(``-00001-of-00003``) are listed as skipped, with the reason. One file that fails does not stop the others.

Orchestration: imports the core, ``base.config``, the store, ``runtime.ggufmeta`` and ``ops.create``.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from modelpkg.base import config
from modelpkg.core.errors import InvalidReferenceError, ModelpkgError, NotFoundError
from modelpkg.core.manifest import model_layers
from modelpkg.core.progress import NullProgress, Progress
from modelpkg.core.reference import Reference, parse_reference
from modelpkg.ops.create import create
from modelpkg.runtime import ggufmeta
from modelpkg.store import Store

HF_HOST = "hf.co"
_SPLIT = re.compile(r"-\d{5}-of-\d{5}$", re.IGNORECASE)
_QUANT = re.compile(r"[-.]([A-Za-z0-9_]+)$")  # llama.cpp's get_gguf_split_info tag rule
_TAG_BAD = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Found:
    """One GGUF in another tool's folder, and the name it gets."""

    repo: str       # user/repo, as the folder spells it
    path: Path      # as found (maybe a symlink)
    target: Path    # the file itself
    ref: Reference


@dataclass(frozen=True)
class Imported:
    name: str
    path: str
    digest: str
    size: int
    how: str        # reflink / link / copy / present


@dataclass
class ImportReport:
    models: list[Imported] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why)
    failed: list[tuple[str, ModelpkgError]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"models": [vars(m) for m in self.models],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "failed": [{"path": p, "error": e.message} for p, e in self.failed]}


# ---------------------------------------------------------------------------------------------------------
# names


def quant_tag(filename: str) -> str:
    """``Llama-3.2-1B-Instruct-Q4_K_M.gguf`` -> ``Q4_K_M``; a file name without one -> its stem, made a tag."""
    stem = filename[:-5] if filename.lower().endswith(".gguf") else filename
    stem = _SPLIT.sub("", stem)
    match = _QUANT.search(stem)
    if match and any(c.isdigit() for c in match.group(1)):
        return match.group(1).upper()
    tag = _TAG_BAD.sub("_", stem).lstrip(".-")[:128]
    return tag or "latest"


def _ref(repo: str, filename: str) -> Reference:
    return parse_reference(f"{HF_HOST}/{repo}:{quant_tag(filename)}")


def _wanted(repos: list[str] | None) -> set[str] | None:
    if not repos:
        return None
    out = set()
    for text in repos:
        text = text.strip().rstrip("/")
        for prefix in ("https://", "hf.co/", "huggingface.co/"):
            if text.lower().startswith(prefix):
                text = text[len(prefix):]
        out.add(text.split(":", 1)[0].lower())
    return out


# ---------------------------------------------------------------------------------------------------------
# the folders


def hf_cache_files(root: Path, repos: list[str] | None = None) -> tuple[list[Found], list[tuple[str, str]]]:
    """The GGUFs of the hub cache at ``root`` (of ``repos`` only, ``user/repo``, when given), and what was skipped."""
    wanted = _wanted(repos)
    found: list[Found] = []
    skipped: list[tuple[str, str]] = []
    if not root.is_dir():
        raise NotFoundError(f"no Hugging Face cache at {root}",
                            "set HF_HUB_CACHE or HF_HOME, or pass --cache DIR")
    for folder in sorted(root.glob("models--*")):
        parts = folder.name.split("--")
        if len(parts) != 3:
            continue  # a repository without a user (models--gpt2): no hf.co/{user}/{repo} name
        repo = f"{parts[1]}/{parts[2]}"
        if wanted is not None and repo.lower() not in wanted:
            continue
        snapshot = _snapshot(folder)
        if snapshot is None:
            continue
        _collect(repo, snapshot, found, skipped)
    _check_wanted(wanted, found, skipped, root)
    return found, skipped


def _snapshot(folder: Path) -> Path | None:
    """The snapshot ``refs/main`` names, else the newest one."""
    try:
        commit = (folder / "refs" / "main").read_text().strip()
    except OSError:
        commit = ""
    if commit and (folder / "snapshots" / commit).is_dir():
        return folder / "snapshots" / commit
    snapshots = [p for p in (folder / "snapshots").glob("*") if p.is_dir()]
    return max(snapshots, key=lambda p: p.stat().st_mtime, default=None)


def lmstudio_files(root: Path, repos: list[str] | None = None) -> tuple[list[Found], list[tuple[str, str]]]:
    """The GGUFs of LM Studio's models folder ``root`` (``{publisher}/{model}/*.gguf``)."""
    wanted = _wanted(repos)
    found: list[Found] = []
    skipped: list[tuple[str, str]] = []
    if not root.is_dir():
        raise NotFoundError(f"no LM Studio models folder at {root}", "pass --models DIR")
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        repo = f"{folder.parent.name}/{folder.name}"
        if wanted is not None and repo.lower() not in wanted:
            continue
        _collect(repo, folder, found, skipped)
    _check_wanted(wanted, found, skipped, root)
    return found, skipped


def default_lmstudio_dir() -> Path:
    """``~/.lmstudio/models``, else LM Studio's older ``~/.cache/lm-studio/models`` where only that exists."""
    new, old = config.lmstudio_models(), config.lmstudio_models_legacy()
    return old if not new.exists() and old.exists() else new


def _collect(repo: str, folder: Path, found: list[Found], skipped: list[tuple[str, str]]) -> None:
    tags: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.name.lower().endswith(".gguf")):
        shown = str(path)
        if "mmproj" in path.name.lower():
            skipped.append((shown, "a projector (mmproj) file, not a model"))
            continue
        if _SPLIT.search(path.name[:-5]):
            skipped.append((shown, "one shard of a split GGUF (not imported yet)"))
            continue
        target = path.resolve()
        if not target.is_file():
            skipped.append((shown, "a link to a file that is not there (an interrupted download?)"))
            continue
        try:
            ref = _ref(repo, path.name)
            if ref.tag in tags:  # two files with one quantization (in two folders): the second keeps its stem
                ref = ref.with_tag(_TAG_BAD.sub("_", path.name[:-5]).lstrip(".-")[:128])
        except InvalidReferenceError as e:
            skipped.append((shown, f"no model name fits it: {e.message}"))
            continue
        tags.add(ref.tag or "")
        found.append(Found(repo, path, target, ref))


def _check_wanted(wanted: set[str] | None, found: list[Found], skipped, root: Path) -> None:
    if wanted is None:
        return
    seen = {f.repo.lower() for f in found}
    missing = sorted(w for w in wanted if w not in seen)
    if missing and not found and not skipped:
        raise NotFoundError(f"no GGUF of {', '.join(missing)} in {root}",
                            "check the name (user/repo); a repository without .gguf files has none to import")
    for name in missing:
        skipped.append((name, f"no GGUF file of this repository in {root}"))


# ---------------------------------------------------------------------------------------------------------
# bringing them in


def import_files(store: Store, files: list[Found], *, allow_link: bool = True,
                 progress: Progress | None = None) -> ImportReport:
    """Bring each of ``files`` in under its name; the report says what happened to each."""
    progress = progress or NullProgress()
    report = ImportReport()
    store.init()
    for item in files:
        try:
            report.models.append(_import_one(store, item, allow_link, progress))
        except ModelpkgError as e:
            report.failed.append((str(item.path), e))
    return report


def _import_one(store: Store, item: Found, allow_link: bool, progress: Progress) -> Imported:
    present = _same_file(store, item)
    if present is not None:
        return present
    ggufmeta.check_magic(item.target)  # before anything is stored: a file that is not GGUF leaves no blob
    task = f"import:{item.ref}"
    size = item.target.stat().st_size
    progress.start(task, size, f"importing {item.path.name}")
    with store.session() as pins, ThreadPoolExecutor(max_workers=1) as pool:
        # the GGUF reader (numpy and gguf take ~0.3-0.8 s to import) loads while the file is hashed, as create
        # does it; create's own read of the metadata is then quick
        reading = pool.submit(ggufmeta.read_info, item.target)
        digest, size, how = store.adopt_file(item.target, pins, allow_link=allow_link, progress=progress, task=task)
        progress.finish(task, how)
        reading.result()
        created = create(store, item.ref, f"FROM {digest}\n", item.target.parent, progress=progress)
    return Imported(str(item.ref), str(item.path), str(created.entry.digest), size, how)


def _same_file(store: Store, item: Found) -> Imported | None:
    """The name's entry when its weights blob is this very file (hard-linked before): nothing to do."""
    entry = next((e for e in store.refs() if e.name == str(item.ref)), None)
    if entry is None:
        return None
    try:
        _, manifest = store.manifest(item.ref)
        weights = model_layers(manifest).model
        if weights is None:
            return None
        blob, source = os.stat(store.blob_path(weights.digest)), os.stat(item.target)
    except (ModelpkgError, OSError):
        return None
    if (blob.st_dev, blob.st_ino) != (source.st_dev, source.st_ino) or blob.st_size != source.st_size:
        return None
    if not store.has_good_blob(weights.digest, weights.size):  # edited in place since: import it again
        return None
    return Imported(str(item.ref), str(item.path), str(entry.digest), weights.size, "present")
