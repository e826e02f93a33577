"""Fast tests: no root, no real sleeping, no network beyond loopback."""
