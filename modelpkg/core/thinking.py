"""A model's thinking, split from its answer by the template's thinking tags, as Ollama's ``thinking.Parser``
does (``thinking/parser.go``)::

    ThinkingSplitter("<think>", "</think>").feed(piece) -> (thinking, content)   # streamed pieces
    split_thinking("<think>", "</think>", text) -> (thinking, content)          # a whole answer

Rules: leading whitespace is skipped while looking for the opening tag; an answer that does not begin with
it is all content. After the opening tag, and after the closing one, whitespace is eaten. Text that may be
the start of a tag is held back until the next piece decides. Unlike Ollama's, ``flush`` gives back what is
still held at the end of the answer (a tag's beginning that never completed), instead of dropping it.

Pure module: no imports beyond the standard library.
"""

from __future__ import annotations

__all__ = ["THINK_LEVELS", "ThinkingSplitter", "check_think", "split_thinking"]

THINK_LEVELS = ("high", "medium", "low", "max")  # Ollama's ThinkValue strings

_LOOKING, _STARTED, _THINKING, _DONE_EATING, _DONE = range(5)


def check_think(value: object) -> bool | str | None:
    """``think`` as Ollama's ``ThinkValue`` accepts it: null, a boolean or a level; else a ValueError with
    Ollama's message."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in THINK_LEVELS:
            return value
        raise ValueError(f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)')
    raise ValueError('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def _overlap(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` are the beginning of ``tag``."""
    for n in range(min(len(tag), len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkingSplitter:
    """Splits a streamed answer into thinking and content by ``opening``/``closing`` tags."""

    def __init__(self, opening: str, closing: str, *, thinking: bool = False):
        self.opening, self.closing = opening, closing
        # thinking=True: the prompt itself ended with the opening tag (Ollama feeds the parser that tag first)
        self.state = _STARTED if thinking else _LOOKING
        self.acc = ""

    def feed(self, piece: str) -> tuple[str, str]:
        self.acc += piece
        thinking, content = [], []
        while True:
            more, t, c = self._eat()
            thinking.append(t)
            content.append(c)
            if not more:
                return "".join(thinking), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is still held when the answer ends."""
        held, self.acc = self.acc, ""
        if self.state in (_THINKING, _STARTED):
            return held, ""
        return "", held

    def _eat(self) -> tuple[bool, str, str]:  # (go on, thinking, content)
        acc = self.acc
        if self.state == _LOOKING:
            trimmed = acc.lstrip()
            if trimmed.startswith(self.opening):
                after = trimmed[len(self.opening):].lstrip()
                self.acc = after
                self.state = _THINKING if after else _STARTED
                return True, "", ""
            if not trimmed or self.opening.startswith(trimmed):
                return False, "", ""
            self.state, self.acc = _DONE, ""
            return False, "", acc
        if self.state == _STARTED:
            trimmed = acc.lstrip()
            self.acc = trimmed
            if not trimmed:
                return False, "", ""
            self.state = _THINKING
            return True, "", ""
        if self.state == _THINKING:
            if self.closing in acc:
                thinking, _, rest = acc.partition(self.closing)
                rest = rest.lstrip()
                self.acc = ""
                self.state = _DONE if rest else _DONE_EATING
                return False, thinking, rest
            keep = _overlap(acc, self.closing)
            self.acc = acc[len(acc) - keep:] if keep else ""
            return False, acc[:len(acc) - keep], ""
        if self.state == _DONE_EATING:
            trimmed = acc.lstrip()
            self.acc = ""
            if trimmed:
                self.state = _DONE
            return False, "", trimmed
        self.acc = ""
        return False, "", acc


def split_thinking(opening: str, closing: str, text: str, *, thinking: bool = False) -> tuple[str, str]:
    """A whole answer's (thinking, content)."""
    splitter = ThinkingSplitter(opening, closing, thinking=thinking)
    t, c = splitter.feed(text)
    t2, c2 = splitter.flush()
    return t + t2, c + c2
