"""Settings read from the environment, at call time (never at import), so tests can point them elsewhere.

- ``MODELPKG_HOME``: the store (default: ``platformdirs.user_data_dir("modelpkg")``)
- ``MODELPKG_CONFIG_DIR``: credentials and configuration (default: ``platformdirs.user_config_dir("modelpkg")``)
- ``MODELPKG_REGISTRY``: the registry a name without a host points at (default ``registry.ollama.ai``)
- ``MODELPKG_DEBUG``: show tracebacks
"""

from __future__ import annotations

import os
from pathlib import Path

from modelpkg.reference import DEFAULT_REGISTRY, Reference, parse_reference


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
