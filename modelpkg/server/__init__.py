"""``modelpkg serve``: Ollama's and OpenAI's HTTP APIs over the store. A front end: built on ``ops``, imported by
the CLI's ``serve`` command only.

``app`` checks and routes each request (``make_server`` binds it) to ``ollama`` (``/api``) or ``openai``
(``/v1``); both use ``backend`` (the store, the models in memory, the log of generations); ``cache`` keeps the
loaded models; ``http`` is the plumbing under them all.
"""
