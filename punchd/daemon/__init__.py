"""The punchd node daemon."""
