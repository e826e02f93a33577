"""Benchmarks: punchd against relay-based meshes, measured side by side in the lab.

Not product code: scripts that run the real programs (``python -m bench NAME``;
``matrix.py``, ``dataplane.py``, ``relay_capacity.py``, ``dns_qps.py``, ...), most of
them in the netns lab (:mod:`netns_tests.lab`), with ``contenders/`` (punchd and the
meshes it is compared with) and ``report.py`` (the tables in ``bench/results``).
"""
