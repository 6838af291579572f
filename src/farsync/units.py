"""Parsing of human-readable quantities: bandwidth, durations, FLOP rates.

Bandwidth is in bits per second ("1Gbps", "100 Mbit/s"), or bytes per second with a capital B
("125MB/s"). Prefixes are decimal (k=1e3, M=1e6, G=1e9, T=1e12), as network vendors use them.
"""

from __future__ import annotations

import re

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

_BW_RE = re.compile(rf"^\s*{_NUM}\s*([kKMGT]?)(bps|bit/s|b/s|Bps|B/s)\s*$")
_TIME_RE = re.compile(rf"^\s*{_NUM}\s*(ns|us|ms|s|min|h)?\s*$")
_FLOPS_RE = re.compile(rf"^\s*{_NUM}\s*([kKMGTP]?)(FLOPS|FLOP/s|flops)\s*$")
_TIME_UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, None: 1.0}


def parse_bandwidth(value: str | float | int) -> float:
    """Return a bandwidth in bits per second. Numbers are taken as bits per second."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bps = float(value)
    else:
        m = _BW_RE.match(str(value))
        if not m:
            raise ValueError(
                f"malformed bandwidth {value!r}: expected a number and a unit such as "
                "'1Gbps', '100Mbps', '10 Gbit/s' or '125MB/s'"
            )
        num, prefix, unit = m.groups()
        bps = float(num) * _PREFIX[prefix] * (8.0 if unit in ("Bps", "B/s") else 1.0)
    if not bps > 0:
        raise ValueError(f"bandwidth must be > 0, got {value!r}")
    return bps


def parse_duration(value: str | float | int) -> float:
    """Return a duration in seconds ("10ms", "50us", "1.5s", or a number of seconds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        sec = float(value)
    else:
        m = _TIME_RE.match(str(value))
        if not m:
            raise ValueError(
                f"malformed duration {value!r}: expected a number and a unit such as "
                "'10ms', '50us', '1.5s' (units: ns, us, ms, s, min, h)"
            )
        sec = float(m.group(1)) * _TIME_UNIT[m.group(2)]
    if sec < 0:
        raise ValueError(f"duration must be >= 0, got {value!r}")
    return sec


def parse_flops(value: str | float | int) -> float:
    """Return a FLOP rate in FLOP/s ("100TFLOPS", "2.5e12", ...)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    else:
        m = _FLOPS_RE.match(str(value))
        if not m:
            raise ValueError(
                f"malformed FLOP rate {value!r}: expected e.g. '100TFLOPS', '312 TFLOP/s' or a number"
            )
        rate = float(m.group(1)) * _PREFIX[m.group(2)]
    if not rate > 0:
        raise ValueError(f"FLOP rate must be > 0, got {value!r}")
    return rate


def format_bytes(n: float) -> str:
    """Human-readable byte count with binary-free decimal prefixes (kB, MB, GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
