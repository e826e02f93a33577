"""What the admin CLI's tables show: times, limits and states in words, not raw fields.

Pure functions of a row and ``now``, so the tests fix the clock. ``--json`` prints the
API's fields untouched for scripts; these are for people: an expiry is "in 3h",
"expired" or a local date; a missing limit is "unlimited"; a key that can no longer
join anyone says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Up to this far away a time reads better as a distance ("in 3h") than a date.
NEAR = 2 * 86400
_STEPS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))


def span(seconds: float) -> str:
    """``5400`` -> ``1h30m``: the two largest units, whole."""
    left = round(max(seconds, 0))  # 10799.6 s after "3h" was asked for still reads 3h
    parts: list[str] = []
    for size, unit in _STEPS:
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
        if len(parts) == 2:
            break
    return "".join(parts)


def local_date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def expiry(ts: float | None, now: float) -> str:
    """An expiry: "never", "expired", "in 3h" when near, else its local date."""
    if ts is None:
        return "never"
    if ts <= now:
        return "expired"
    return f"in {span(ts - now)}" if ts - now < NEAR else local_date(ts)


def past(ts: float | None, now: float) -> str:
    """A time gone by (created, last seen): "3h ago" when near, else its local date."""
    if not ts:
        return "never"
    if ts > now:  # the server's clock ahead of ours: say when, not a negative age
        return local_date(ts)
    return f"{span(now - ts)} ago" if now - ts < NEAR else local_date(ts)


def uses(left: int | None) -> str:
    return "unlimited" if left is None else str(left)


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def key_state(key: dict[str, Any], now: float) -> str:
    """Whether a key still joins nodes, and if not, why (both when both)."""
    why = [w for w, bad in (("expired", key.get("expires_at") is not None
                             and key["expires_at"] <= now),
                            ("exhausted", key.get("uses_left") == 0)) if bad]
    return ", ".join(why) or "usable"


Row = dict[str, str]
Column = tuple[str, Callable[[dict[str, Any], float], str]]

KEY_COLUMNS: list[Column] = [
    ("id", lambda k, now: str(k["id"])),
    ("uses left", lambda k, now: uses(k.get("uses_left"))),
    ("expires", lambda k, now: expiry(k.get("expires_at"), now)),
    ("created", lambda k, now: past(k.get("created_at"), now)),
    ("state", key_state),
]
NODE_COLUMNS: list[Column] = [
    ("name", lambda n, now: str(n["name"])),
    ("ipv4", lambda n, now: n.get("ipv4") or "-"),
    ("ipv6", lambda n, now: n.get("ipv6") or "-"),
    ("approved", lambda n, now: "yes" if n.get("approved") else "pending"),
    ("last seen", lambda n, now: past(n.get("last_seen"), now)),
    ("expires", lambda n, now: expiry(n.get("expires_at"), now)),
    ("wg public key", lambda n, now: str(n.get("wg_public_key", ""))),
]
NETWORK_COLUMNS: list[Column] = [
    ("name", lambda n, now: str(n["name"])),
    ("ipv4", lambda n, now: str(n.get("ipv4_cidr") or "-")),
    ("ipv6", lambda n, now: n.get("ipv6_cidr") or "-"),
    ("port", lambda n, now: str(n.get("listen_port", "-"))),
    ("local only", lambda n, now: yes_no(n.get("local_only"))),
    ("hole punching", lambda n, now: yes_no(n.get("hole_punching", True))),
    ("approval", lambda n, now: "required" if n.get("require_approval") else "no"),
]
DNS_COLUMNS: list[Column] = [
    ("name", lambda r, now: str(r["name"])),
    ("type", lambda r, now: str(r["rtype"])),
    ("value", lambda r, now: str(r["value"])),
]


def render(rows: list[dict[str, Any]], columns: list[Column], now: float) -> str:
    """A table with a header line, columns padded; "(none)" for no rows."""
    if not rows:
        return "(none)"
    cells = [[" ".join(fmt(r, now).split()) for _, fmt in columns] for r in rows]
    heads = [name.upper() for name, _ in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
             for line in (heads, *cells)]
    return "\n".join(lines)
