"""The punchd signal server: control plane, rendezvous, STUN, relay and mesh DNS."""
