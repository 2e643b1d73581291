"""The sans-I/O core: request bytes in, per-trace buffer, decisions, kept traces out; the decision
cache, the packed and compressed store, and the memory plan. Plain values and an injected clock."""
