"""The foundation: the engine, the method contract, metering, records, registries, models, cache,
seeding. Nothing here imports tunebench.app (tests/test_layers.py walks the imports)."""
