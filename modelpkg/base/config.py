"""Settings read from the environment, at call time (never at import), so tests can point them elsewhere.

The one module of modelpkg that reads the environment (``tests/test_layers.py`` checks it):

- ``MODELPKG_HOME``: the store (default: ``platformdirs.user_data_dir("modelpkg")``)
- ``MODELPKG_CONFIG_DIR``: credentials and configuration (default: ``platformdirs.user_config_dir("modelpkg")``)
- ``MODELPKG_REGISTRY``: the registry a name without a host points at (default ``registry.ollama.ai``)
- ``MODELPKG_DEBUG``: show tracebacks
- ``MODELPKG_CA_BUNDLE``: a CA bundle (PEM) for registries' TLS
- ``MODELPKG_CONFIG_FILE``: the pull-mirror configuration (default ``config.toml`` in the config dir)
- ``MODELPKG_POLICY``: the trust policy (default ``policy.toml`` in the config dir)
- ``MODELPKG_KEY_PASSWORD``: the password of an encrypted signing key
- ``MODELPKG_REGISTRY_USER[_<HOST>]``, ``MODELPKG_REGISTRY_PASSWORD[_<HOST>]``, ``MODELPKG_REGISTRY_HOST``,
  ``MODELPKG_REGISTRY_HOSTS``: registry logins for CI, and the hosts the host-less one is for
  (``modelpkg.registry.credentials``)
- ``MODELPKG_SERVE_HEADER_TIMEOUT``, ``MODELPKG_SERVE_BODY_TIMEOUT`` (seconds), ``MODELPKG_SERVE_MAX_BODY`` (bytes),
  ``MODELPKG_SERVE_MAX_JSON_VALUES``, ``MODELPKG_SERVE_MAX_CONNECTIONS``, ``MODELPKG_SERVE_MAX_CLIENT_CONNECTIONS``:
  what one client may cost ``serve`` (``serve_limits``; unset: the defaults of ``modelpkg.server.http.Limits``)
- ``MODELPKG_LIMIT_RATE``: the default of ``pull --limit-rate`` (bytes/s, ``20M``, ``512Ki``)
- Hugging Face's own (huggingface_hub's ``constants.py``): ``HF_ENDPOINT`` (default ``https://huggingface.co``),
  ``HF_TOKEN`` (then ``HUGGING_FACE_HUB_TOKEN``), ``HF_TOKEN_PATH``, ``HF_HOME`` (default
  ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``), ``HF_HUB_CACHE`` (then
  ``HUGGINGFACE_HUB_CACHE``, default ``$HF_HOME/hub``)
- ``MODELPKG_HOST`` (else Ollama's ``OLLAMA_HOST``): where ``ps``, ``stop`` and ``run`` look for a running
  ``modelpkg serve`` (default ``127.0.0.1:11434``); ``MODELPKG_SERVE_TOKEN``: its bearer token
- ``MODELPKG_RUNNER_MEMORY_MB``: the data-memory limit of each model runner process (default: what is
  available when it starts); ``MODELPKG_GRAMMAR_MAX_REPEAT``, ``MODELPKG_GRAMMAR_MAX_BYTES``: bounds on the
  grammar a request's ``format`` may build (``core.limits``; 0 switches one off)
- ``MODELPKG_NUM_PARALLEL`` (else Ollama's ``OLLAMA_NUM_PARALLEL``): how many requests ``serve`` decodes at once
  per loaded model (``serve --parallel``); ``MODELPKG_MAX_QUEUE`` (else ``OLLAMA_MAX_QUEUE``): how many more may
  wait for a slot before ``serve`` answers 503
- ``MODELPKG_TEST_RUNNER_FAULT``: tests only, read in the runner process: ``segv``, ``abort`` or ``oom``,
  optionally ``:<tokens>``, makes it crash after that many generated tokens
- ``MODELPKG_TEST_QUANTIZE_FAULT``: tests only, read in the quantizer process (``runtime.quantize``): ``segv``,
  ``abort`` or ``stall`` while llama.cpp writes the second tensor
- other tools' own: ``OLLAMA_MODELS``, ``DOCKER_CONFIG``, ``REGISTRY_AUTH_FILE``, ``XDG_RUNTIME_DIR``,
  ``XDG_CONFIG_HOME``
"""

from __future__ import annotations

import os
from pathlib import Path

from modelpkg.core.errors import UsageError
from modelpkg.core.reference import DEFAULT_REGISTRY, Reference, parse_reference


def home() -> Path:
    value = os.environ.get("MODELPKG_HOME")
    if value:
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("modelpkg"))


def config_dir() -> Path:
    value = os.environ.get("MODELPKG_CONFIG_DIR")
    if value:
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("modelpkg"))


def default_registry() -> str:
    return os.environ.get("MODELPKG_REGISTRY") or DEFAULT_REGISTRY


def reference(text: str) -> Reference:
    """Parse a model name with the configured default registry."""
    return parse_reference(text, default_registry())


def debug() -> bool:
    return os.environ.get("MODELPKG_DEBUG", "") not in ("", "0", "false")


def serve_host() -> str | None:
    """Where a running ``modelpkg serve`` is looked for: ``MODELPKG_HOST``, else ``OLLAMA_HOST``, else None."""
    return os.environ.get("MODELPKG_HOST") or os.environ.get("OLLAMA_HOST") or None


def serve_token() -> str | None:
    return os.environ.get("MODELPKG_SERVE_TOKEN") or None


def _path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def ca_bundle() -> str | None:
    return os.environ.get("MODELPKG_CA_BUNDLE") or None


def config_file() -> Path | None:
    """``$MODELPKG_CONFIG_FILE`` when set (then a missing file is an error, not "no mirrors")."""
    return _path("MODELPKG_CONFIG_FILE")


def policy_file() -> Path | None:
    """``$MODELPKG_POLICY`` when set (then a missing file is an error, not "no policy")."""
    return _path("MODELPKG_POLICY")


def key_password() -> bytes | None:
    value = os.environ.get("MODELPKG_KEY_PASSWORD")
    return value.encode() if value else None


def registry_login(key: str | None = None) -> tuple[str | None, str | None]:
    """``MODELPKG_REGISTRY_USER[_<key>]`` and ``MODELPKG_REGISTRY_PASSWORD[_<key>]``."""
    suffix = f"_{key}" if key else ""
    return os.environ.get(f"MODELPKG_REGISTRY_USER{suffix}"), os.environ.get(f"MODELPKG_REGISTRY_PASSWORD{suffix}")


def registry_login_host() -> str | None:
    """``MODELPKG_REGISTRY_HOST``: the host the plain ``MODELPKG_REGISTRY_USER`` login is for, instead of the
    default registry."""
    return os.environ.get("MODELPKG_REGISTRY_HOST") or None


def registry_login_hosts() -> tuple[str, ...]:
    """``MODELPKG_REGISTRY_HOSTS``: more hosts the plain login is for (comma- or space-separated)."""
    value = os.environ.get("MODELPKG_REGISTRY_HOSTS") or ""
    return tuple(host for host in value.replace(",", " ").split() if host)


def ollama_models() -> Path | None:
    return _path("OLLAMA_MODELS")


def docker_config() -> Path | None:
    return _path("DOCKER_CONFIG")


def registry_auth_file() -> Path | None:
    return _path("REGISTRY_AUTH_FILE")


def xdg_runtime_dir() -> Path | None:
    value = os.environ.get("XDG_RUNTIME_DIR")
    return Path(value) if value else None


def xdg_config_home() -> Path | None:
    value = os.environ.get("XDG_CONFIG_HOME")
    return Path(value) if value else None


# ----- serve's bounds on what one client may cost (kept together; the defaults live with the server)

SERVE_LIMITS = {  # Limits field -> (variable, type)
    "header_timeout": ("MODELPKG_SERVE_HEADER_TIMEOUT", float),
    "body_timeout": ("MODELPKG_SERVE_BODY_TIMEOUT", float),
    "max_body": ("MODELPKG_SERVE_MAX_BODY", int),
    "max_json_values": ("MODELPKG_SERVE_MAX_JSON_VALUES", int),
    "max_connections": ("MODELPKG_SERVE_MAX_CONNECTIONS", int),
    "max_client_connections": ("MODELPKG_SERVE_MAX_CLIENT_CONNECTIONS", int),
}


def serve_limits() -> dict[str, float | int]:
    """The ``MODELPKG_SERVE_*`` bounds that are set, by ``Limits`` field; each a positive number."""
    found: dict[str, float | int] = {}
    for field, (name, kind) in SERVE_LIMITS.items():
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        try:
            number = kind(value)
        except ValueError:
            number = 0
        if not number > 0 or number != number or number == float("inf"):
            raise UsageError(f"{name} must be a positive {'whole ' if kind is int else ''}number, not {value[:40]!r}",
                             f"unset it for the default, or set e.g. {name}={'30' if kind is float else '64'}")
        found[field] = number
    return found


HF_DEFAULT_ENDPOINT = "https://huggingface.co"


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` (a mirror, or a test server), else the Hub itself; no trailing slash."""
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).strip().rstrip("/")


def hf_token() -> str | None:
    """``HF_TOKEN``, else the older ``HUGGING_FACE_HUB_TOKEN`` (huggingface_hub reads both, in this order)."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (os.environ.get(name) or "").strip()
        if value:
            return value
    return None


def hf_home() -> Path:
    value = _path("HF_HOME")
    if value:
        return value
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "huggingface"


def hf_token_path() -> Path:
    """Where ``hf auth login`` writes the token: ``HF_TOKEN_PATH``, else ``$HF_HOME/token``."""
    return _path("HF_TOKEN_PATH") or hf_home() / "token"


def hf_hub_cache() -> Path:
    """The Hub's download cache: ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``."""
    return _path("HF_HUB_CACHE") or _path("HUGGINGFACE_HUB_CACHE") or hf_home() / "hub"


def lmstudio_models() -> Path:
    """LM Studio's models folder (its docs "Import Models"): ``~/.lmstudio/models``."""
    return Path.home() / ".lmstudio" / "models"


def lmstudio_models_legacy() -> Path:
    """Where LM Studio before 0.3 kept its models: ``~/.cache/lm-studio/models``."""
    return Path.home() / ".cache" / "lm-studio" / "models"


def limit_rate() -> str | None:
    """``MODELPKG_LIMIT_RATE``, as typed (``modelpkg.core.units.parse_rate`` reads it)."""
    return (os.environ.get("MODELPKG_LIMIT_RATE") or "").strip() or None


def _int_setting(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _positive_setting(names: tuple[str, ...], minimum: int) -> int | None:
    """The first of ``names`` that is set, as an int of at least ``minimum`` (a bad value is one clear error)."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise UsageError(f"{name}={value!r} is not a whole number of at least {minimum}",
                             f"set {name} to {minimum} or more, or unset it")
        return number
    return None


def num_parallel() -> int | None:
    """``MODELPKG_NUM_PARALLEL``, else ``OLLAMA_NUM_PARALLEL``: requests decoded together per loaded model."""
    return _positive_setting(("MODELPKG_NUM_PARALLEL", "OLLAMA_NUM_PARALLEL"), 1)


def max_queue() -> int | None:
    """``MODELPKG_MAX_QUEUE``, else ``OLLAMA_MAX_QUEUE``: requests that may wait for a slot (0: none wait)."""
    return _positive_setting(("MODELPKG_MAX_QUEUE", "OLLAMA_MAX_QUEUE"), 0)


def runner_memory_mb() -> int | None:
    """``MODELPKG_RUNNER_MEMORY_MB``: each model runner process's data-memory limit (RLIMIT_DATA), MiB."""
    return _int_setting("MODELPKG_RUNNER_MEMORY_MB")


def grammar_max_repeat() -> int | None:
    """``MODELPKG_GRAMMAR_MAX_REPEAT``: the largest repetition count (maxItems, maxLength, ...) a schema in
    ``format`` may use; 0: no limit."""
    return _int_setting("MODELPKG_GRAMMAR_MAX_REPEAT")


def grammar_max_bytes() -> int | None:
    """``MODELPKG_GRAMMAR_MAX_BYTES``: the largest grammar text a schema may become; 0: no limit."""
    return _int_setting("MODELPKG_GRAMMAR_MAX_BYTES")


def runner_fault() -> tuple[str, int] | None:
    """``MODELPKG_TEST_RUNNER_FAULT=segv|abort|oom[:after_tokens]`` (tests only; read in the runner
    process): the fault to cause and after how many generated tokens (default 1)."""
    value = os.environ.get("MODELPKG_TEST_RUNNER_FAULT", "").strip()
    if not value:
        return None
    kind, _, after = value.partition(":")
    if kind not in ("segv", "abort", "oom"):
        return None
    return kind, int(after) if after.isdigit() else 1


def quantize_fault() -> str | None:
    """``MODELPKG_TEST_QUANTIZE_FAULT=segv|abort|stall`` (tests only; read in the quantizer process)."""
    value = os.environ.get("MODELPKG_TEST_QUANTIZE_FAULT", "").strip()
    return value if value in ("segv", "abort", "stall") else None
