"""TLS contexts and credentials (reloaded when their files change) and bearer-token authentication,
shared by the receivers, the exporters and the peers."""
