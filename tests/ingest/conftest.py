"""Fixtures of the ingest tests (defined in ingest_fixtures.py, whose writers the tests import)."""

from ingest_fixtures import images, pushgateway  # type: ignore[import-not-found]  # noqa: F401
