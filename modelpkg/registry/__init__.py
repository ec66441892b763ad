"""Talking to OCI registries: the HTTP client, authentication, credentials, downloads and pull mirrors.

``client`` is the transport and the blob/manifest operations, ``auth`` the challenge and token logic,
``credentials`` where logins come from, ``download`` the verified byte path of a blob, ``mirrors`` where
pulls may go first. Imports ``core`` and ``base`` only: never the store (``modelpkg.ops`` joins the two),
the runtime, the verbs or the front ends.
"""
