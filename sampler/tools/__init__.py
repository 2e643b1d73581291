"""Offline and self-contained commands: they read files or generate traffic, and serve nothing."""
