"""Human-readable quantities: parsing bandwidth, durations, FLOP rates and sizes; formatting times,
bytes, bandwidths, losses and utilization for reports (`farsync compare` and `farsync sweep` share these).

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
_BYTES_RE = re.compile(rf"^\s*{_NUM}\s*([kKMGT]?)(i?)B\s*$")
_TIME_UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, None: 1.0}


def _parse(value, regex: re.Pattern, convert, what: str, examples: str, positive: bool) -> float:
    """Numbers pass through; strings must match `regex`; `convert(match)` gives the value."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    else:
        m = regex.match(str(value))
        if not m:
            raise ValueError(f"malformed {what} {value!r}: expected a number and a unit such as {examples}")
        out = convert(m)
    if (positive and not out > 0) or out < 0:
        raise ValueError(f"{what} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return out


def parse_bandwidth(value: str | float | int) -> float:
    """Return a bandwidth in bits per second. Numbers are taken as bits per second."""
    return _parse(
        value, _BW_RE,
        lambda m: float(m[1]) * _PREFIX[m[2]] * (8.0 if m[3] in ("Bps", "B/s") else 1.0),
        "bandwidth", "'1Gbps', '100Mbps', '10 Gbit/s' or '125MB/s'", positive=True,
    )


def parse_duration(value: str | float | int) -> float:
    """Return a duration in seconds ("10ms", "50us", "1.5s", or a number of seconds)."""
    return _parse(
        value, _TIME_RE, lambda m: float(m[1]) * _TIME_UNIT[m[2]],
        "duration", "'10ms', '50us', '1.5s' (units: ns, us, ms, s, min, h)", positive=False,
    )


def parse_flops(value: str | float | int) -> float:
    """Return a FLOP rate in FLOP/s ("100TFLOPS", "2.5e12", ...)."""
    return _parse(
        value, _FLOPS_RE, lambda m: float(m[1]) * _PREFIX[m[2]],
        "FLOP rate", "'100TFLOPS' or '312 TFLOP/s'", positive=True,
    )


def parse_bytes(value: str | float | int) -> float:
    """Return a size in bytes ("25MB" = 25e6, "25MiB" = 25 x 2^20, or a number of bytes)."""
    return _parse(
        value, _BYTES_RE,
        lambda m: float(m[1]) * ((1024.0 ** " KMGT".index(m[2].upper() or " ")) if m[3] else _PREFIX[m[2]]),
        "size", "'25MB', '25MiB' or '1GB'", positive=True,
    )


def format_bandwidth(bps: float) -> str:
    """'1 Gbps', '100 Mbps', '2.5 Tbps' (decimal prefixes, as the parser reads them)."""
    for unit, scale in (("Tbps", 1e12), ("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3)):
        if abs(bps) >= scale:
            return f"{bps / scale:.4g} {unit}"
    return f"{bps:.4g} bps"


_TIME_UNITS = (("h", 3600.0, 3600.0), ("min", 60.0, 60.0), ("s", 1.0, 0.1), ("ms", 1e-3, 1e-3), ("us", 1e-6, 0.0))


def time_unit(seconds: float, whole: bool = False) -> tuple[str, float]:
    """The unit a time of `seconds` reads best in, and its length in seconds: ('ms', 1e-3) for
    0.0123, ('s', 1.0) from 0.1 s on (a step time of 0.1 s), ('min', 60.0) for 90, ('h', 3600.0)
    from an hour on; ('s', 1.0) for 0. With `whole`, the largest unit the time is at least one of
    (0.15 s -> ms: an axis up to 0.15 s ticks 0, 50, 100, 150 ms)."""
    s = abs(seconds)
    if s == 0 or s != s:
        return "s", 1.0
    return next((unit, scale) for unit, scale, lo in _TIME_UNITS if s >= (max(lo, scale) if whole else lo) or unit == "us")


def format_seconds(seconds: float | None) -> str:
    """A time with its unit for reports and tables, 3 significant digits: '12.3 ms', '0.343 us',
    '0.1 s', '45.7 s', '1.5 min', '2.5 h'; '-' for none. `farsync compare`, `farsync sweep` and the demo use it."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0 s"
    unit, scale = time_unit(seconds)
    return f"{seconds / scale:.3g} {unit}"


def format_seconds_column(values: list[float | None]) -> list[str]:
    """Times of one table column in one unit, the unit of the shortest nonzero time, so that they
    compare at a glance ('50.5 ms', '151 ms' rather than '50.5 ms', '0.151 s'); 3 significant
    digits, whole numbers from 100 on ('2500 ms'). Per value (`format_seconds`) when the longest
    would need more than 5 digits in that unit; '-' for none."""
    nonzero = [abs(v) for v in values if v]
    if not nonzero:
        return [format_seconds(v) for v in values]
    unit, scale = time_unit(min(nonzero))
    if max(nonzero) / scale >= 1e5:
        return [format_seconds(v) for v in values]
    num = lambda x: f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"  # noqa: E731
    return ["-" if v is None else "0 s" if v == 0 else f"{num(v / scale)} {unit}" for v in values]


def format_utilization(x: float | None) -> str:
    """Compute utilization as a percentage with 2 decimals ('98.71%'), 2 significant digits below
    1% ('0.0082%'), so runs close to each other stay apart; '-' for none."""
    if x is None:
        return "-"
    pct = 100.0 * x
    return f"{pct:.2f}%" if pct == 0 or abs(pct) >= 1 else f"{pct:.2g}%"


def format_count(n: float) -> str:
    """'0.35M', '1B', '100B' (parameter counts)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale / 10:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def format_bytes(n: float | None, digits: int | None = None) -> str:
    """Human-readable byte count with decimal prefixes (kB, MB, GB, TB): '65.41 kB' (2 decimals);
    with `digits`, that many significant digits ('100 kB', '2.5 MB': axis ticks); '-' for none."""
    if n is None:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if digits is None else f"{n / scale:.{digits}g} {unit}"
    return f"{n:.0f} B" if digits is None else f"{n:.{digits}g} B"


def format_loss(x: float | None) -> str:
    """A loss for people: 4 decimals in the usual range, scientific notation outside it (a diverged
    finite loss such as 3.2e+130 is not printed with 130 digits); '-' for none."""
    if x is None:
        return "-"
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if x != 0 and not 1e-3 <= abs(x) < 1e5:
        return f"{x:.4e}"
    return f"{x:.4f}"


def format_duration(seconds: float) -> str:
    """'42s', '3m 05s', '2h 03m' (for progress lines and ETAs)."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
