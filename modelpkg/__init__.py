"""modelpkg: Docker-style packaging for local LLMs.

Layers, from the bottom up (each may import only the ones above it in this list):

- pure core, no I/O: ``errors``, ``digest``, ``reference``, ``mediatypes``, ``modelfile``,
  ``manifest``, ``template``
- I/O adapters: ``fsutil``, ``ggufmeta``, ``store``, ``registry``, ``runner``
- orchestration: ``create``, ``pull``, ``push``
- the command line: ``cli``

``tests/test_layers.py`` checks that the imports point this way.
"""

__version__ = "0.1.0"
