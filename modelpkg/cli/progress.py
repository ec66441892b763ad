"""Drawing progress for the command line: bars on a terminal, JSON lines for scripts, nothing otherwise.

CLI layer: imports ``modelpkg.core.progress`` only.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

from modelpkg.core.progress import NullProgress, Progress


def human_bytes(n: float) -> str:
    """Decimal units, as Ollama and Docker print sizes: ``240 MB``, ``1.2 GB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Task:
    def __init__(self, total: int | None, label: str):
        self.total = total
        self.label = label
        self.done = 0
        self.started = time.monotonic()
        self.status = ""


class TerminalProgress(Progress):
    """One line per task, redrawn in place (ANSI cursor movement), at most ten times a second."""

    WIDTH = 25

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tasks: dict[str, _Task] = {}
        self.lines_drawn = 0
        self.last_draw = 0.0
        self.lock = threading.Lock()

    def start(self, task: str, total: int | None, label: str = "") -> None:
        with self.lock:
            self.tasks[task] = _Task(total, label or task)
            self._draw(force=True)

    def advance(self, task: str, amount: int) -> None:
        with self.lock:
            if task in self.tasks:
                self.tasks[task].done += amount
            self._draw()

    def finish(self, task: str, status: str = "done") -> None:
        with self.lock:
            if task in self.tasks:
                self.tasks[task].status = status
            self._draw(force=True)

    def message(self, text: str) -> None:
        with self.lock:
            self.tasks[f"msg:{text}"] = _Task(None, text)
            self.tasks[f"msg:{text}"].status = " "
            self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        out = []
        if self.lines_drawn:
            out.append(f"\x1b[{self.lines_drawn}F")
        for t in self.tasks.values():
            out.append("\x1b[2K" + self._line(t, now) + "\n")
        self.lines_drawn = len(self.tasks)
        self.stream.write("".join(out))
        self.stream.flush()

    def _line(self, t: _Task, now: float) -> str:
        if t.total is None:
            return t.label
        frac = min(t.done / t.total, 1.0) if t.total else 1.0
        filled = int(frac * self.WIDTH)
        bar = "█" * filled + " " * (self.WIDTH - filled)
        elapsed = max(now - t.started, 1e-6)
        speed = t.done / elapsed
        tail = t.status if t.status else (
            f"{human_bytes(speed)}/s {human_duration((t.total - t.done) / speed) if speed > 0 else '?'}")
        return f"{t.label}: {frac * 100:3.0f}% ▕{bar}▏ {human_bytes(t.done)}/{human_bytes(t.total)}  {tail}"


class JsonProgress(Progress):
    """One JSON object per event on ``stream``, in the shape of Ollama's progress lines."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.done: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def _emit(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()

    def start(self, task: str, total: int | None, label: str = "") -> None:
        with self.lock:
            self.done[task], self.totals[task] = 0, total
            self._emit({"status": label or task, "digest": task, "total": total, "completed": 0})

    def advance(self, task: str, amount: int) -> None:
        with self.lock:
            self.done[task] = self.done.get(task, 0) + amount
            now = time.monotonic()
            if now - self.last.get(task, 0) >= 0.5:
                self.last[task] = now
                self._emit({"status": "progress", "digest": task, "total": self.totals.get(task),
                            "completed": self.done[task]})

    def finish(self, task: str, status: str = "done") -> None:
        with self.lock:
            self._emit({"status": status, "digest": task, "total": self.totals.get(task),
                        "completed": self.done.get(task, 0)})

    def message(self, text: str) -> None:
        with self.lock:
            self._emit({"status": text})


def for_terminal(json_events: bool = False, quiet: bool = False) -> Progress:
    """Bars on a terminal, JSON events when asked, and nothing on a pipe."""
    if json_events:
        return JsonProgress()
    if not quiet and sys.stderr.isatty():
        return TerminalProgress()
    return NullProgress()
