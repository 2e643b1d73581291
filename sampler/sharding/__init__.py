"""Sharding by trace id: who owns a trace (membership), how members are found (discovery), and
forwarding spans to their owner."""
