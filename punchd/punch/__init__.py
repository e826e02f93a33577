"""Hole punching: candidates and pairs, the sans-IO punch session, its trio driver."""
