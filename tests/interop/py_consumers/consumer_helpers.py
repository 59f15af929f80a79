"""The main suite's SDK helpers (py/conftest.py: centrifuge-python clients of both codecs,
the subscription recorder, unique names), loaded under another module name so the two
`conftest` modules do not collide; and the names of the sources that
scripts/interop-consumers.sh set up."""

import importlib.util
import json
import os
from pathlib import Path

_INTEROP = Path(__file__).parent.parent
_spec = importlib.util.spec_from_file_location("interop_sdk_helpers", _INTEROP / "py" / "conftest.py")
_sdk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sdk)  # type: ignore[union-attr]

# Fixtures, re-exported by conftest.py.
clients = _sdk.clients
codec = _sdk.codec
subscribe = _sdk.subscribe
uid = _sdk.uid


def sources() -> dict:
    """Table, stream, subject and queue names (resources.py)."""
    with open(os.environ["INTEROP_CONSUMERS_STATE"]) as f:
        return json.load(f)
