"""Fixtures for the centrifuge-python proxy suite (helpers live in proxy_helpers.py)."""

import pytest
import pytest_asyncio

from proxy_helpers import Codec, ProxyClients


@pytest.fixture(params=[False, True], ids=["json", "protobuf"])
def codec(request) -> Codec:
    return Codec(use_protobuf=request.param)


@pytest_asyncio.fixture
async def clients(codec: Codec):
    factory = ProxyClients(codec)
    try:
        yield factory
    finally:
        await factory.close_all()
