"""The one error hierarchy of modelpkg.

Every failure a user can cause or meet is a ``ModelpkgError``: a one-line message that names its subject,
a hint that says what to do, and an exit code per kind. Library code raises these and never prints or
exits; adapters translate foreign exceptions (OSError, requests, json, llama_cpp) into them with
``raise ... from e``. The CLI prints ``Error: <message>`` and the hint, and exits with ``exit_code``.

Pure module: imports nothing from modelpkg.
"""

from __future__ import annotations


class ModelpkgError(Exception):
    """Base class. ``message`` is one line; ``hint`` is optional advice."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return self.message


class UsageError(ModelpkgError):
    """Bad arguments or options given to a command."""

    exit_code = 2


class InvalidInputError(ModelpkgError):
    """Input that cannot be understood: a name, a parameter value, a JSON document."""

    exit_code = 3


class ModelfileError(InvalidInputError):
    """A Modelfile that does not parse or does not resolve; the message names the line."""

    def __init__(self, message: str, line: int | None = None, hint: str | None = None):
        self.line = line
        text = f"Modelfile line {line}: {message}" if line else f"Modelfile: {message}"
        super().__init__(text, hint)
        self.reason = message


class InvalidReferenceError(InvalidInputError):
    """A model reference (name) that is not valid."""

    default_hint = "names look like [host[:port]/][namespace/]name[:tag][@sha256:<64 hex>], lowercase"


class TemplateError(InvalidInputError):
    """A prompt template that does not parse or fails to execute."""


class NotFoundError(ModelpkgError):
    """A model, blob or file that does not exist."""

    exit_code = 4


class IntegrityError(ModelpkgError):
    """Content that does not match its digest or declared size."""

    exit_code = 5
    default_hint = "the bytes were corrupted on disk or in transit; run 'modelpkg verify' or pull again"


class AuthError(ModelpkgError):
    """Missing, wrong or insufficient credentials."""

    exit_code = 6


class RegistryError(ModelpkgError):
    """A registry answered with an error or broke the protocol."""

    exit_code = 7

    def __init__(self, message: str, hint: str | None = None, code: str | None = None, status: int | None = None):
        super().__init__(message, hint)
        self.code = code
        self.status = status


class NetworkError(RegistryError):
    """The registry could not be reached, or the connection failed past the retries."""


class StoreError(ModelpkgError):
    """The local store cannot be read or written (permissions, disk full, read-only)."""

    exit_code = 8


class BusyError(ModelpkgError):
    """Another modelpkg process holds a lock for too long."""

    exit_code = 9


class RunnerError(ModelpkgError):
    """The model could not be loaded or run."""

    exit_code = 10


class TrustError(ModelpkgError):
    """A signature is missing, invalid or made with a key the trust policy does not accept."""

    exit_code = 11
