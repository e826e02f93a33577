"""Discovery on WireGuard's port: STUN transactions, NAT classification, address changes.

Sans-IO cores: ``stun_client.py`` (one RFC 8489 transaction: the retransmit schedule
with time as an argument, datagrams in and out), ``classify.py`` (RFC 5780 NAT
classification over those transactions) and ``bpf.py`` (the classic BPF programs
and the interpreter that tests them; only its ``attach`` touches a socket).

Adapters: ``sharedsock.py`` (the raw sockets that share WireGuard's UDP port),
``service.py`` (:class:`~punchd.discovery.service.Discovery`: the one receive loop
of that port, feeding punch probes and STUN answers to their cores; run in its
network agent's nursery) and ``addrwatch.py`` (rtnetlink address and link events,
read with trio).
"""
