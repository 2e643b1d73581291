"""The I/O shell around the pipeline: wiring and lifecycle (app), the admin HTTP server and its UI,
the metrics, the configuration in force, the process's view of the system, and `run --workers`."""
