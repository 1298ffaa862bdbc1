"""Routing: signals, policy and the Decision record (the router issue builds them)."""
