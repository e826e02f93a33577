"""Benchmarks: punchd against relay-based meshes, measured side by side in the lab."""
