"""scripts/soak: the pool-day soak (issue #11 point 13). See scripts/soak --help."""
