"""Helpers for the centrifuge-python restart suite: the tests start, kill and restart tether.

The server under test is `$TETHER_BIN serve --config $TETHER_CONFIG` (default config
tests/interop/tether-disk.json) with `TETHER_ENGINE_DISK_PATH` set to a data directory of the
test's own under $INTEROP_DISK_DIR; a restart is the same command on the same data directory
and port. scripts/interop-restart.sh sets these variables (and the port). Every process
started here is appended to $INTEROP_RESTART_PIDS (if set), so the script can stop one a
crashed runner left behind; its output goes to $INTEROP_RESTART_LOG.

The event recorder, SDK handlers and client factory are the ones of the main suite
(py/conftest.py), loaded under another module name so the two `conftest` modules do not
collide.
"""

import asyncio
import datetime
import importlib.util
import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import aiohttp

_HERE = Path(__file__).parent
_INTEROP = _HERE.parent

# py/conftest.py reads TETHER_CONFIG when it is loaded: default it first.
os.environ.setdefault("TETHER_CONFIG", str(_INTEROP / "tether-disk.json"))
_spec = importlib.util.spec_from_file_location("interop_sdk_helpers", _INTEROP / "py" / "conftest.py")
_sdk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sdk)  # type: ignore[union-attr]

API_KEY = _sdk.API_KEY
API_URL = _sdk.API_URL
CONFIG = _sdk.CONFIG
Clients = _sdk.Clients
Codec = _sdk.Codec
# Fixtures, re-exported by py_restart/conftest.py.
clients = _sdk.clients
codec = _sdk.codec
WAIT = _sdk.WAIT
subscribe = _sdk.subscribe
uid = _sdk.uid
wait_until = _sdk.wait_until

CONFIG_PATH = Path(os.environ["TETHER_CONFIG"]).resolve()
TETHER_BIN = os.environ.get("TETHER_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR") or _INTEROP.parent.parent / "target") / "debug" / "tether"
)
_DISK_ROOT = Path(os.environ.get("INTEROP_DISK_DIR") or tempfile.mkdtemp(prefix="tether-interop-disk-"))
_LOG = Path(os.environ.get("INTEROP_RESTART_LOG") or _DISK_ROOT / "tether.log")
_PIDS = os.environ.get("INTEROP_RESTART_PIDS")

_HOST = CONFIG.get("http_server", {}).get("address") or "127.0.0.1"
_PORT = CONFIG.get("http_server", {}).get("port", 8000)
READY_URL = f"http://{_HOST}:{_PORT}/ready"


def fresh_data_dir(label: str) -> Path:
    """A fresh, empty data directory for one test's store."""
    _DISK_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=_DISK_ROOT))


async def api(method: str, body: Dict[str, Any]) -> Dict[str, Any]:
    """Calls the server HTTP API; returns its `result` (raises on an error)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{API_URL}/{method}",
            json=body,
            headers={"X-API-Key": API_KEY},
            timeout=aiohttp.ClientTimeout(total=WAIT),
        ) as res:
            assert res.status == 200, f"API {method}: HTTP {res.status}"
            reply = await res.json()
    assert "error" not in reply, f"API {method}: {reply['error']}"
    return reply.get("result") or {}


async def _ready_status() -> int:
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(READY_URL, timeout=aiohttp.ClientTimeout(total=1)) as res:
                return res.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return 0  # nothing listening (or not answering yet)


class TetherServer:
    """One tether server on a test's data directory; `env` adds TETHER_* overrides."""

    def __init__(self, data_dir: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.data_dir = data_dir
        self.env = env or {}
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.starts = 0

    async def start(self) -> None:
        """Starts the server and waits until `GET /ready` answers 200 (15 s at most)."""
        assert self.proc is None, "tether is already running"
        # The port must be free: a server that is not ours must not pass for ours.
        for _ in range(50):
            if await _ready_status() == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"something already answers {READY_URL}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env["TETHER_ENGINE_DISK_PATH"] = str(self.data_dir)
        env.update(self.env)
        self.starts += 1
        with open(_LOG, "ab") as log:
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
            log.write(
                f"\n---- {stamp} py: start #{self.starts} of {self.data_dir} {json.dumps(self.env)}\n".encode()
            )
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                TETHER_BIN,
                "serve",
                "--config",
                str(CONFIG_PATH),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if _PIDS:
            with open(_PIDS, "a") as pids:
                pids.write(f"{self.proc.pid}\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            if self.proc.returncode is not None:
                rc = self.proc.returncode
                self.proc = None
                raise AssertionError(f"tether exited ({rc}) before it was ready (log: {_LOG})")
            if await _ready_status() == 200:
                return
            if loop.time() > deadline:
                raise AssertionError(f"tether not ready within 15 s (log: {_LOG})")
            await asyncio.sleep(0.05)

    async def kill(self, sig: int, timeout: float = 10.0) -> int:
        """Sends `sig` and waits for the process to end; returns its return code."""
        assert self.proc is not None, "tether is not running"
        proc = self.proc
        proc.send_signal(sig)
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"tether did not exit within {timeout} s of signal {sig}") from None
        finally:
            self.proc = None
        return rc

    async def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL after 5 s; no-op when not running."""
        if self.proc is None or self.proc.returncode is not None:
            self.proc = None
            return
        try:
            await self.kill(signal.SIGTERM, timeout=5.0)
        except AssertionError:
            pass
