"""Configuration: the typed schema, presets, profiles, the model registry, metric keys, spec checks."""
