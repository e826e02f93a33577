"""The lab tests: the real programs in network namespaces behind real NATs (root).

Each test builds its own lab (:mod:`netns_tests.lab`, random name prefixes so runs in
parallel do not collide) and runs ``signal-server`` and ``punchd`` as processes;
``wg_conformance_main.py`` runs the WireGuard conformance suite inside a lab host,
``demo.py`` is the README's demo.
"""
