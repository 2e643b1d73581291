"""The config file's models (they generate the JSON Schema), units, and YAML with line numbers."""
