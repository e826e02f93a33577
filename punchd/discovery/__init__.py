"""Discovery on the WireGuard port: STUN transactions and, to come, NAT classification."""
