"""The bottom of I/O: settings read from the environment, atomic file writes, key and policy files.

Imports only ``modelpkg.core``; the store, the registry client and the runtime all build on it.
"""
