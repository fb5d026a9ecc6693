"""Python client for Baton."""
