"""Shared pieces of every step: typed config, storage, telemetry, tiny models for tests."""
