"""``within``: run a call that may hang on a thread, so that a regression fails the test instead of hanging the
suite (the hostile-input tests: a FIFO, a 2^60-entry array)."""

from __future__ import annotations

import threading


def within(seconds: float, fn, *args, **kwargs):
    """``fn(*args)``'s result (or exception), or a failure if it is still running after ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed back to the test's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")
