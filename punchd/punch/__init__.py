"""Hole punching: candidates and pairs, the punch session per peer, its trio driver.

Sans-IO cores: ``candidates.py`` (candidates and their pairs, RFC 8445 priorities),
``session.py`` (:class:`~punchd.punch.session.PunchSession`: events and the time in,
datagrams to send and outcomes out; randomness is an injected ``random.Random``) and
``prediction.py`` (port prediction for symmetric NATs: whether a peer's mapping
ports can be guessed, and which to try).

Adapter: ``driver.py`` (:class:`~punchd.punch.driver.PunchDriver`, which runs a
session with trio's clock and a send callback; the daemon's ``punching.py`` wires
drivers to the shared port).
"""
