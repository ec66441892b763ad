"""Byte rates as people type them: ``--limit-rate 20M``, ``MODELPKG_LIMIT_RATE=512Ki``.

A number (decimals allowed) and an optional unit: SI prefixes count in thousands (``k``/``K`` 10^3, ``M``
10^6, ``G`` 10^9, ``T`` 10^12), IEC prefixes in 1024s (``Ki`` 2^10, ``Mi`` 2^20, ``Gi`` 2^30, ``Ti`` 2^40),
optionally followed by ``B`` and ``/s`` (``20MB/s``, ``20MiB/s``). Without a unit the number is bytes per
second. So ``20M`` is 20,000,000 bytes/s and ``20Mi`` is 20,971,520 (curl and wget read ``20M`` as the
latter: write ``20Mi`` for that).

Pure module: imports only ``modelpkg.core.errors``.
"""

from __future__ import annotations

import re

from modelpkg.core.errors import InvalidInputError

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([kKmMgGtT]i?)?\s*(?:[bB])?\s*(?:/\s*s)?\s*")
MAX_RATE = 10**15


def parse_rate(text: str) -> int:
    """Bytes per second for ``text`` (``20M``, ``1.5Gi``, ``800k``, ``100000``); at least 1."""
    match = _RATE.fullmatch(text or "")
    if not match:
        raise InvalidInputError(f"invalid rate {str(text)[:40]!r}",
                                "write bytes per second with an optional unit: 800k, 20M, 1.5G (SI) or 20Mi (IEC)")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if value < 1 or value > MAX_RATE:
        raise InvalidInputError(f"invalid rate {text!r}: it must be between 1 byte/s and 1 PB/s")
    return int(value)


def format_rate(rate: float) -> str:
    """``20000000`` -> ``20.0 MB/s`` (SI, as ``parse_rate`` reads ``M``)."""
    for unit, size in (("GB/s", 10**9), ("MB/s", 10**6), ("kB/s", 10**3)):
        if rate >= size:
            return f"{rate / size:.1f} {unit}"
    return f"{rate:.0f} B/s"
