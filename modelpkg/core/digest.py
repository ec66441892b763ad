"""Content digests: the ``Digest`` value and hashing helpers.

A digest is ``<algorithm>:<hex>``; modelpkg stores and produces sha256 only, and refuses other algorithms
with a clear error rather than trusting content it cannot check (OCI image-spec, descriptor.md#digests).

Pure module: imports only ``modelpkg.core.errors`` and hashlib.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from modelpkg.core.errors import InvalidInputError

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Digest:
    """A sha256 digest. ``str(d)`` is the canonical ``sha256:<hex>``."""

    hex: str

    def __post_init__(self) -> None:
        if not _SHA256_HEX.fullmatch(self.hex):
            raise InvalidInputError(f"invalid sha256 digest: {self.hex[:80]!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<64 lowercase hex>``; any other algorithm or form is refused."""
        if not isinstance(text, str):
            raise InvalidInputError(f"invalid digest: {text!r}")
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise InvalidInputError(f"invalid digest {text[:100]!r}: expected sha256:<64 hex digits>")
        if algorithm != "sha256":
            raise InvalidInputError(
                f"unsupported digest algorithm {algorithm[:32]!r} in {text[:100]!r}",
                "modelpkg verifies sha256 digests only",
            )
        if not _SHA256_HEX.fullmatch(hexpart):
            raise InvalidInputError(f"invalid digest {text[:100]!r}: expected sha256:<64 lowercase hex digits>")
        return cls(hexpart)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        """The digest of ``data``."""
        return cls(hashlib.sha256(data).hexdigest())

    @property
    def short(self) -> str:
        """The first 12 hex digits, as ``docker images`` and ``ollama list`` show ids."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def sha256() -> hashlib._Hash:
    """A new incremental sha256 hasher (one place to change if the algorithm ever changes)."""
    return hashlib.sha256()
