"""The fast tests: no root, loopback only, and no real sleeping.

Cores are tested without I/O (codecs with RFC vectors, every prefix and fuzzing;
state machines and the path policy with tables in float time; ``natsim.py`` is a
seeded RFC 4787 NAT simulator for them). Adapters are tested on loopback under
trio's ``MockClock`` where time matters, with sockets bound to port 0 and handed
over (``conftest.py``). ``wg_conformance.py`` is the one suite every WireGuard
backend passes; ``fuzz_targets.py`` is shared with ``python -m bench fuzz``.
"""
