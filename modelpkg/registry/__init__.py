"""Talking to OCI registries: the HTTP client, authentication and credentials.

``client`` is the transport and the blob/manifest operations, ``auth`` the challenge and token logic,
``credentials`` where logins come from. ``pull`` and ``push`` (one level up) orchestrate them with the
store. Nothing here imports the store or the CLI.
"""

from modelpkg.registry.client import RegistryClient

__all__ = ["RegistryClient"]
