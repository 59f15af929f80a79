"""Fixtures for the centrifuge-python restart suite (helpers live in restart_helpers.py)."""

import pytest_asyncio

# The SDK suite's own `codec` (JSON and Protobuf) and `clients` fixtures, not copies of them.
from restart_helpers import TetherServer, clients, codec  # noqa: F401


@pytest_asyncio.fixture
async def servers():
    """Makes TetherServer objects and stops every one of them at the end of the test."""
    made = []

    def make(data_dir, env=None) -> TetherServer:
        server = TetherServer(data_dir, env)
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            await server.stop()
