"""Target descriptions: one TOML file per target (read by :mod:`convgen.target`)."""
