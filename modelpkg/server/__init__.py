"""``modelpkg serve``: Ollama's and OpenAI's HTTP APIs over the store. A front end: built on ``ops``, imported by
the CLI's ``serve`` command only.
"""
