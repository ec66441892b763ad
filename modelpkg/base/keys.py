"""Key files and the trust policy file: generating, reading and checking them.

- ``generate`` writes an ECDSA P-256 pair: the private key as PKCS#8 PEM, mode 0600, encrypted with
  ``BestAvailableEncryption`` when a password is given; the public key as SubjectPublicKeyInfo PEM
  (``-----BEGIN PUBLIC KEY-----``), which ``cosign verify --key`` reads as it is.
- A key's *fingerprint* is ``SHA256:`` + the hex sha256 of its DER SubjectPublicKeyInfo (the same for the
  private and the public half), so people can compare keys without sharing files.
- ``load_policy`` reads ``policy.toml`` from the config dir (``MODELPKG_POLICY`` overrides the path); key
  paths in it are relative to the policy file.

Adapter: file I/O and ``cryptography``. Imports the pure core, ``config`` and ``fsutil``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from modelpkg.base import config, fsutil
from modelpkg.core.errors import AuthError, InvalidInputError, NotFoundError, UsageError
from modelpkg.core.signing import Policy, TrustedKey, parse_policy

PRIVATE_NAME = "modelpkg.key"
PUBLIC_NAME = "modelpkg.pub"
MAX_KEY_FILE = 64 * 1024


def generate(folder: Path, password: bytes | None = None, *, name: str = "modelpkg",
             force: bool = False) -> tuple[Path, Path, str]:
    """Write ``<name>.key`` (0600) and ``<name>.pub`` in ``folder``; returns both paths and the fingerprint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise UsageError(f"{path} already exists", "choose another folder with -o, or pass --force")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fsutil.os_error(e, folder, "creating") from e
    fsutil.atomic_write(private_path, private_pem, mode=0o600)  # created 0600: never readable by others
    fsutil.atomic_write(public_path, public_pem, mode=0o644)
    return private_path, public_path, fingerprint(key.public_key())


def fingerprint(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_FILE:
            raise InvalidInputError(f"{path} is too large to be a {what}")
        return path.read_bytes()
    except FileNotFoundError as e:
        raise NotFoundError(f"{what} not found: {path}", "create one with 'modelpkg keygen'") from e
    except IsADirectoryError as e:
        raise InvalidInputError(f"{path} is a folder, not a {what}") from e
    except OSError as e:
        raise fsutil.os_error(e, path, "reading") from e


def is_encrypted(path: Path) -> bool:
    return b"ENCRYPTED" in _read(Path(path), "private key").split(b"\n", 1)[0]


def load_private(path: Path, password: bytes | None = None):
    """The private key in ``path`` (PEM, PKCS#8 or traditional). A key others can read is refused, as ssh does."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    data = _read(path, "private key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise AuthError(f"the private key {path} is readable by others (mode {mode:o})", f"run: chmod 600 {path}")
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not password:
        raise AuthError(f"the private key {path} is encrypted and no password was given",
                        "pass --password-stdin or set MODELPKG_KEY_PASSWORD")
    try:
        key = serialization.load_pem_private_key(data, password=password if encrypted else None)
    except ValueError as e:
        if encrypted:
            raise AuthError(f"wrong password for the private key {path}") from e
        raise InvalidInputError(f"{path} is not a PEM private key",
                                "use a key written by 'modelpkg keygen' (ECDSA P-256)") from e
    except TypeError as e:
        raise InvalidInputError(f"{path}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidInputError(f"{path} is not an ECDSA P-256 key", "cosign signatures use ECDSA P-256 keys")
    return key


def load_public(path: Path) -> TrustedKey:
    """A trusted public key from a PEM file (``BEGIN PUBLIC KEY``), named by its file name."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        hint = "that is a private key: pass the .pub file" if b"PRIVATE KEY" in data else None
        raise InvalidInputError(f"{path} is not a PEM public key", hint) from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidInputError(f"{path} is not an ECDSA public key", "cosign signatures use ECDSA P-256 keys")
    return TrustedKey(path.name, fingerprint(key), key)


def load_public_dir(folder: Path) -> list[TrustedKey]:
    """Every ``*.pub`` / ``*.pem`` public key in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"key folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix in (".pub", ".pem") and p.is_file())
    keys = [load_public(p) for p in paths if b"PRIVATE KEY" not in _read(p, "public key")]
    if not keys:
        raise NotFoundError(f"no public keys (*.pub, *.pem) in {folder}")
    return keys


# ---------------------------------------------------------------------------------------------------------
# the trust policy file


def policy_path() -> Path:
    return config.policy_file() or config.config_dir() / "policy.toml"


def load_policy(path: Path | None = None) -> tuple[Policy, Path]:
    """The trust policy and the folder its key paths are relative to; no file is an empty policy (off)."""
    path = Path(path) if path else policy_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if config.policy_file() is not None and path == policy_path():
            raise NotFoundError(f"trust policy not found: {path}", "fix MODELPKG_POLICY or create the file") from None
        return Policy(), path.parent
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read the trust policy {path}: {e}") from e
    return parse_policy(text, str(path)), path.parent


def policy_keys(paths: tuple[str, ...], base: Path) -> list[TrustedKey]:
    """The keys a policy rule names, relative to the policy file's folder."""
    return [load_public((base / Path(p).expanduser()) if not Path(p).expanduser().is_absolute()
                        else Path(p).expanduser()) for p in paths]
