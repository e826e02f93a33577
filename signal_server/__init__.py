"""The punchd signal server: control plane, rendezvous, STUN, relay and mesh DNS.

``main.py``'s :class:`~signal_server.main.SignalServer` owns the process's one nursery
tree: the HTTP API, the node expiry sweep, the STUN responder, the DNS zone pusher and
the relay, each started once it has bound. Adapters: ``app.py`` (the HTTP API,
Starlette under hypercorn's trio worker, assembled from the per-resource handlers in
:mod:`signal_server.routes`), ``service.py`` (the one write path: store call, event
hub, change hooks), ``dns.py`` (keeps :mod:`meshdns` equal to
the store), ``cli.py`` (the ``signal-server`` command) and ``store.py`` (SQLite,
blocking, each call run in a worker thread). ``stun_server.py`` holds both layers: the
sans-IO :class:`~signal_server.stun_server.StunCore` and its trio adapter
:class:`~signal_server.stun_server.StunResponder`. :mod:`signal_server.relay` is the
relay.
"""
