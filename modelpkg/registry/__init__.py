"""Talking to OCI registries: the HTTP client, authentication, credentials, downloads and pull mirrors.

``transport`` sends a request (timeouts, retries, redirects, errors), ``client`` the blob and manifest
operations on top of it, ``upload`` the upload sessions, ``download`` the verified byte path of a blob,
``auth`` the challenge and token logic, ``credentials`` where logins come from, ``mirrors`` where pulls may
go first. Imports ``core`` and ``base`` only: never the store (``modelpkg.ops`` joins the two),
the runtime, the verbs or the front ends.
"""
