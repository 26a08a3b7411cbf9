"""Built-in actors usable from manifests without writing Python (filled in by the CLI work)."""
