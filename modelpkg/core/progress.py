"""How long work reports progress: a small interface the library calls and the CLI draws.

Library code takes a ``Progress`` (default ``NullProgress``) and never prints. Events are keyed by a
``task`` id (a layer's short digest, say), so one bar per layer can be drawn, as Ollama's pull does.

Pure module.
"""

from __future__ import annotations


class Progress:
    """Receives progress events. Subclasses draw bars, emit JSON lines, or ignore them."""

    def start(self, task: str, total: int | None, label: str = "") -> None:
        """Work ``task`` begins; ``total`` bytes (or None if unknown)."""

    def advance(self, task: str, amount: int) -> None:
        """``amount`` more bytes of ``task`` are done."""

    def finish(self, task: str, status: str = "done") -> None:
        """``task`` ended with ``status``."""

    def message(self, text: str) -> None:
        """A status line, e.g. ``writing manifest``."""


class NullProgress(Progress):
    """Ignores every event: the default for library calls and non-terminal output."""
