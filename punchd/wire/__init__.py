"""Wire formats shared by punchd and the signal server: pure codecs, no I/O."""
