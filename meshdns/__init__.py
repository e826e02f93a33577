"""The mesh's authoritative DNS (dnslib), served by the signal server process."""
