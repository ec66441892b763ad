"""Making the clients the verbs talk through: one registry's, and the one a pull reads through.

``client_for`` is a ``RegistryClient`` for a reference's registry, with the credentials found for that host
(``credentials.lookup``) and the CA bundle of the settings (``config.ca_bundle()``) unless one is given; for
``hf.co`` and ``huggingface.co`` it is ``huggingface.HuggingFaceClient`` (``HF_ENDPOINT``, ``HF_TOKEN``).
``pull_client`` puts the mirrors configured for the reference (``mirrors.sources_for``) in front of it; a
mirror's own client gets short retries and timeouts, so a broken mirror costs a moment and not the
upstream's backoff.

Adapter glue: imports ``config`` and the registry's ``client``, ``credentials``, ``huggingface`` and
``mirrors``; never the store or the orchestration.
"""

from __future__ import annotations

from collections.abc import Callable

from modelpkg.base import config
from modelpkg.core.progress import Progress
from modelpkg.core.reference import Reference
from modelpkg.registry import credentials, huggingface, mirrors
from modelpkg.registry.client import PullClient, RegistryClient
from modelpkg.registry.transport import DEFAULT_RETRIES, DEFAULT_TIMEOUT

MIRROR_RETRIES = 1             # a broken mirror should cost a moment, not the upstream client's backoff
MIRROR_TIMEOUT = (5.0, 60.0)   # (connect, read) seconds


def client_for(ref: Reference, *, insecure: bool = False, ca_bundle: str | None = None) -> RegistryClient:
    """A client for ``ref``'s registry with the credentials found for it (see ``registry.credentials``)."""
    return _client(ref.host, insecure=insecure, ca_bundle=ca_bundle)


def pull_client(ref: Reference, client: RegistryClient | None = None, *, insecure: bool = False,
                progress: Progress | None = None,
                tune: Callable[[RegistryClient], None] | None = None) -> tuple[PullClient, bool]:
    """The client a pull of ``ref`` reads through, and whether the caller is to close it.

    ``client`` is the upstream's (``client_for(ref)`` when None, then the caller's to close). With mirrors
    configured for ``ref`` it is wrapped in a ``MirroredClient`` that tries them first (and closes an owned
    upstream client with its own); else it is returned as it is. ``tune`` is applied to every client the pull
    reads through (the rate limit and concurrency of ``pull``).
    """
    own = client is None
    client = client or client_for(ref, insecure=insecure)
    sources = mirrors.sources_for(ref, insecure=insecure)
    factory = mirror_client
    if tune is not None:  # the pull's transfer settings, on the upstream's client and each mirror's
        tune(client)

        def factory(source: mirrors.Source) -> RegistryClient:
            made = mirror_client(source)
            tune(made)
            return made

    if len(sources) == 1:
        return client, own
    return mirrors.MirroredClient(ref, sources, client, factory, progress=progress, owns_upstream=own), True


def mirror_client(source: mirrors.Source) -> RegistryClient:
    """The client for one mirror: its own host's credentials, and short retries and timeouts."""
    return _client(source.host, insecure=source.insecure, retries=MIRROR_RETRIES, timeout=MIRROR_TIMEOUT)


def _client(host: str, *, insecure: bool, ca_bundle: str | None = None, retries: int = DEFAULT_RETRIES,
            timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> RegistryClient:
    ca_bundle = ca_bundle or config.ca_bundle()
    if huggingface.is_huggingface(host):
        return huggingface.client(host, insecure=insecure, ca_bundle=ca_bundle, retries=retries, timeout=timeout)
    return RegistryClient(host, insecure=insecure, credentials=credentials.lookup(host), ca_bundle=ca_bundle,
                          retries=retries, timeout=timeout)
