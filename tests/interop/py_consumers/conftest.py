"""Fixtures for the consumers suite (helpers live in consumer_helpers.py)."""

import pytest

# The SDK suite's own `codec` (JSON and Protobuf) and `clients` fixtures, not copies of them.
from consumer_helpers import clients, codec  # noqa: F401
from consumer_helpers import sources as read_sources


@pytest.fixture
def sources() -> dict:
    """Table, stream, subject and queue names of this run."""
    return read_sources()
