"""modelpkg: Docker-style packaging for local LLMs.

The package's folders are its layers. From the bottom up, each may import only itself and the rooms below it:

- ``core``: pure values and parsers (names, digests, manifests, Modelfiles, templates, formats, trust policy).
  str/bytes in, frozen values out: no files, network, environment or clock.
- ``base``: the bottom of I/O: settings from the environment, atomic file writes, key files.
- ``store``, ``registry``, ``runtime``: the adapters: the OCI-layout store (and other tools' folders and
  archives), OCI registries over HTTP, llama.cpp and GGUF files. ``store`` and ``registry`` never import
  each other; ``runtime`` imports neither.
- ``ops``: one verb per module (create, pull, push, models, sign, chat, interop, ...), built from the adapters.
- ``server`` and ``cli``: the front ends (HTTP APIs, the click command line). Only ``cli`` imports click.

``tests/test_layers.py`` derives each module's layer from its folder and checks every import against this.
"""

__version__ = "0.1.0"
