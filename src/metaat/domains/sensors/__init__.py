"""The sensor domain."""
