"""Loading a split GGUF straight from the store's blobs, through llama.cpp's ``llama_model_load_from_splits``.

llama-cpp-python's ``Llama`` loads a model with ``llama_model_load_from_file`` (in ``_internals.LlamaModel``);
given the first shard of a split GGUF, llama.cpp finds the others by file name (``llama_split_path``:
``NAME-0000i-of-0000N.gguf`` beside it). Blobs are named by digest, so that would fail. ``loading`` swaps the
loader for the one load it wraps: the same call, made with ``llama_model_load_from_splits`` and the shard
paths in order (llama.cpp then checks each shard's ``split.no`` and ``split.count`` itself). No file is
copied or linked under a shard name.

Adapter: imports ``llama_cpp`` (when a split model is loaded) and the core's errors; ``runner`` calls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from modelpkg.core.errors import RunnerError

_SWAP = threading.Lock()  # one swapped load at a time in this process (the loader is a module attribute)


@contextlib.contextmanager
def loading(shard_paths: Sequence[Path]) -> Iterator[None]:
    """Within the block, a model load reads the shards ``shard_paths`` (in order); a no-op for one file."""
    if len(shard_paths) < 2:
        yield
        return
    from llama_cpp import _internals
    from llama_cpp import llama_cpp as low

    load_splits = getattr(low, "llama_model_load_from_splits", None)
    if load_splits is None:
        raise RunnerError("this llama-cpp-python cannot load a split GGUF (it has no llama_model_load_from_splits)",
                          "upgrade it: pip install --upgrade 'modelpkg[run]'")
    paths = [str(p).encode("utf-8") for p in shard_paths]
    array = (ctypes.c_char_p * len(paths))(*paths)

    def load_from_file(path_model: bytes, params):
        if path_model != paths[0]:  # a load this swap was not made for (never expected): load it as asked
            return original(path_model, params)
        return load_splits(array, len(paths), params)

    with _SWAP:
        original = _internals.llama_cpp.llama_model_load_from_file
        _internals.llama_cpp.llama_model_load_from_file = load_from_file
        try:
            yield
        finally:
            _internals.llama_cpp.llama_model_load_from_file = original
