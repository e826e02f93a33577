"""The punchd node daemon: the process, its control socket and one agent per network.

Sans-IO cores (no sockets, no clock, no trio; time and events come in as
arguments): ``policy.py`` (the path policy: each peer's endpoint, probation,
distrust, the initiator and relay-roaming rules, what status shows), ``reconcile.py``
(desired WireGuard device vs observed -> operations), ``model.py`` (the server's view
of the network), ``status.py`` (status Structs built from facts) and ``paths.py``
(the path value and the candidate guess).

Adapters: ``main.py`` (:class:`~punchd.daemon.main.Daemon`, which owns the process's
nursery tree: the control server, the watchdog and one agent per network),
``network.py`` (:class:`~punchd.daemon.network.NetworkAgent`: the loops of one joined
network, a nursery with discovery, punching, relaying and its stream, reconcile,
publish and address-watch loops), ``portservices.py`` (starts discovery, punching and
relaying on the shared port), ``publishing.py`` (gathers and publishes this node's
candidates), ``punching.py`` and ``relaying.py`` (punch sessions
and relay binds on that port), ``tasks.py`` (``Wakeup``, the one way to wake a
loop, and the shared ``run()`` of the port's services), ``control.py`` (the tagged union of commands,
pure, and the Unix-socket :class:`~punchd.daemon.control.ControlServer`),
``state.py`` (the state directory on disk), ``hostaddrs.py`` (host addresses by
netlink) and ``sdnotify.py`` (systemd's notify socket).
"""
