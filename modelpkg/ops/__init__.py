"""The verbs: one module each (create, pull, push, models, sign, chat, interop), joining store, registry and runtime.

A verb may call another verb's public functions (pull checks signatures through ``sign``), never its private
names, and the verbs form no cycle. Nothing here imports the server or the CLI.
"""
