"""Running models: llama.cpp through llama-cpp-python (``runner``) and GGUF metadata (``ggufmeta``).

Imports ``core`` and ``base`` only. ``runner`` is the one module that touches ``llama_cpp``.
"""
