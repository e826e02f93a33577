"""Wire formats shared by punchd and the signal server: pure codecs, no I/O.

``stun.py`` (RFC 8489/5780 messages), ``probe.py`` (the punch probes), ``relay.py``
(relay binds), ``token.py`` (join tokens), ``signing.py`` (signed HTTP requests),
``api.py`` (the msgspec Structs of the HTTP API, the one schema) and ``addr.py``
(endpoints: the one ``Addr`` type, its parser and formatter). Each parse takes
untrusted bytes and returns a value or raises one codec error. No sockets and no
trio; the only things read from outside are fresh randomness (transaction ids,
nonces) and, in ``signing.py``, the wall clock when the caller passes no ``now``.
"""
