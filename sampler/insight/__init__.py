"""What is learned from all traffic, before any sampling: the service graph (and, later, span metrics
and recent decisions). Plain values in, plain values out: no sockets, no clocks of its own."""
