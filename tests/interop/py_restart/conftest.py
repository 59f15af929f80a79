"""Fixtures for the centrifuge-python restart suite (helpers live in restart_helpers.py)."""

import pytest
import pytest_asyncio

from restart_helpers import Clients, Codec, TetherServer


@pytest.fixture(params=[False, True], ids=["json", "protobuf"])
def codec(request) -> Codec:
    return Codec(use_protobuf=request.param)


@pytest_asyncio.fixture
async def clients(codec: Codec):
    factory = Clients(codec)
    try:
        yield factory
    finally:
        await factory.close_all()


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
