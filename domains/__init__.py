"""Built-in domain plugins: one YAML file per domain, validated by ``pipeline.config``."""
