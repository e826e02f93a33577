"""punchd: a NAT-traversal-first WireGuard mesh node."""

__version__ = "0.1.0"
