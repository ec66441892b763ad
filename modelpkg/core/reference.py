"""Model references: ``[host[:port]/][namespace/]name[:tag][@sha256:<hex>]``.

Parsing merges the defaults into one canonical form right away, as Ollama does (types/model/name.go): with
no host the registry is the default one (``registry.ollama.ai`` unless configured) and a single-component
path gets the ``library/`` namespace, so ``gemma3`` is ``registry.ollama.ai/library/gemma3:latest``. With a
host given, the path is kept as written (OCI repositories may have one component or many). A host is
recognised as Docker does (distribution/reference normalize.go): the first component contains ``.`` or
``:``, or is ``localhost``.

Grammar (distribution/reference regexp.go, OCI distribution-spec "pulling manifests"): path components
``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*``, tag ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``, host plus path at most
255 characters.

Hugging Face as a registry (``hf.co`` and ``huggingface.co``, as Ollama and the Hub's docs "Use Ollama with any
GGUF Model on Hugging Face Hub" write them): the path is ``{user}/{repo}`` as the Hub spells it, and its case is
kept, as Ollama keeps it (``hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF``); each part follows the Hub's repo-id
rule (huggingface_hub ``validate_repo_id``: ``[A-Za-z0-9_.-]``, 1-96 characters, not starting or ending with
``.`` or ``-``, no ``--`` or ``..``). The tag is the quantization or a file name, sent as typed (the Hub matches
it case-insensitively); the host is lower-cased.

Pure module: imports only ``modelpkg.core.errors`` and ``modelpkg.core.digest``. The default registry is passed in by
the caller (see ``modelpkg.base.config``), never read from the environment here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidInputError, InvalidReferenceError

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255
HUGGINGFACE_HOSTS = ("hf.co", "huggingface.co")

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HF_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


@dataclass(frozen=True)
class Reference:
    """A canonical model reference. ``tag`` is None only when the reference pins a digest without a tag."""

    host: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: Digest | None = None

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``host/repository`` without tag or digest."""
        return f"{self.host}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/`` in a registry URL: the digest if pinned, else the tag."""
        return str(self.digest) if self.digest is not None else (self.tag or DEFAULT_TAG)

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.host, self.repository, tag, None)

    def with_digest(self, digest: Digest) -> Reference:
        return Reference(self.host, self.repository, self.tag, digest)

    def without_digest(self) -> Reference:
        return Reference(self.host, self.repository, self.tag or DEFAULT_TAG, None)

    def short(self, default_registry: str = DEFAULT_REGISTRY) -> str:
        """The shortest form that parses back to this reference, e.g. ``gemma3:latest``."""
        text = self.repository
        if self.host == default_registry:
            prefix = DEFAULT_NAMESPACE + "/"
            if text.startswith(prefix) and "/" not in text[len(prefix):]:
                text = text[len(prefix):]
        else:
            text = f"{self.host}/{text}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def is_huggingface(host: str) -> bool:
    """``hf.co`` or ``huggingface.co``: Hugging Face's Ollama-compatible registry (names keep their case)."""
    return host.lower() in HUGGINGFACE_HOSTS


def mask_password(text: str, *, host: bool = False) -> str:
    """``text`` for an error message, with a password typed as URL user info (``[https://]user:pw@host/...``)
    masked: errors are printed and logged, passwords must not be. A digest reference (``name:tag@sha256:...``)
    is left alone: nothing after its ``@`` holds a ``/``. ``host=True``: ``text`` is a registry host, never a
    digest reference, so ``user:pw@host`` is masked without a ``/`` after it."""
    head, at, rest = text.partition("@")
    scheme, _, userinfo = head.rpartition("://")
    if at and ":" in userinfo and "/" not in userinfo and (host or scheme or "/" in rest):
        return f"{scheme + '://' if scheme else ''}{userinfo.split(':', 1)[0]}:***@{rest}"
    return text


def parse_reference(text: str, default_registry: str = DEFAULT_REGISTRY) -> Reference:
    """Parse and canonicalise a model reference; raise ``InvalidReferenceError`` naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError("invalid model name: the name is empty")
    original = mask_password(text)  # only ever shown in messages
    text = text.strip()
    if "://" in text:
        raise InvalidReferenceError(
            f"invalid model name {original!r}: remove the scheme",
            "write host/namespace/name:tag; plain http is used for localhost, or with --insecure",
        )
    digest = None
    if "@" in text:
        text, _, digest_text = text.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except InvalidInputError as e:
            raise InvalidReferenceError(f"invalid model name {original!r}: {e.message}") from e
    host, path, tag = _split(text, original, default_registry)
    if is_huggingface(host):
        host = host.lower()
        _check_hf_path(path, original)
    else:
        _check_path(path, original)
    if tag is not None and not _TAG.fullmatch(tag):
        raise InvalidReferenceError(
            f"invalid tag {tag[:140]!r} in {original!r}",
            "a tag is 1-128 of A-Z a-z 0-9 _ . - and does not start with . or -",
        )
    if len(host) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReferenceError(f"invalid model name: longer than {MAX_NAME_LENGTH} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(host, path, tag, digest)


def _split(text: str, original: str, default_registry: str) -> tuple[str, str, str | None]:
    head, slash, rest = text.partition("/")
    if slash and ("." in head or ":" in head or head == "localhost"):
        host, remainder = head, rest
        if not _HOST.fullmatch(host):
            raise InvalidReferenceError(f"invalid registry host {host!r} in {original!r}")
    else:
        host, remainder = default_registry, text
    tag = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not tag:
            raise InvalidReferenceError(f"invalid model name {original!r}: the tag after ':' is empty")
    if host == default_registry and remainder and "/" not in remainder:
        remainder = f"{DEFAULT_NAMESPACE}/{remainder}"
    return host, remainder, tag


def _check_path(path: str, original: str) -> None:
    if not path:
        raise InvalidReferenceError(f"invalid model name {original!r}: the name part is empty")
    for part in path.split("/"):
        if not part:
            raise InvalidReferenceError(f"invalid model name {original!r}: empty path component")
        if part in (".", ".."):
            raise InvalidReferenceError(f"invalid model name {original!r}: '{part}' is not allowed")
        if _COMPONENT.fullmatch(part):
            continue
        if _COMPONENT.fullmatch(part.lower()):
            raise InvalidReferenceError(
                f"invalid model name {original!r}: the repository must be lowercase",
                f"use {path.lower()!r}",
            )
        raise InvalidReferenceError(
            f"invalid model name {original!r}: bad component {part[:80]!r}",
            "components are lowercase letters and digits, joined by '.', '_', '__' or '-'",
        )


def _check_hf_path(path: str, original: str) -> None:
    parts = path.split("/")
    if len(parts) != 2 or not all(parts):
        raise InvalidReferenceError(
            f"invalid model name {original!r}: a Hugging Face name is hf.co/{{user}}/{{repo}}[:{{quant}}]",
            "for example hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        )
    for part in parts:
        if not _HF_PART.fullmatch(part) or "--" in part or ".." in part:
            raise InvalidReferenceError(
                f"invalid model name {original!r}: bad Hugging Face repository part {part[:80]!r}",
                "parts are 1-96 of A-Z a-z 0-9 _ . -, not starting or ending with . or -, without -- or ..",
            )
