"""Generates the Python stubs of proxy.proto (proxy_pb2.py, proxy_pb2_grpc.py) into
backend/_gen/ with `python -m grpc_tools.protoc`; that directory is gitignored.

Generation is skipped when _gen/ already holds stubs of the same proxy.proto from the same
grpcio-tools version (a stamp file). scripts/interop-proxy.sh runs this once before the gRPC
half; grpc_app.py calls `ensure_stubs()` on import too, so the backend and its tests work when
started by hand.

Run: `python backend/gen_stubs.py` (prints the directory).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "proxy.proto"
OUT = HERE / "_gen"
STAMP = OUT / ".stamp"


def _fingerprint() -> str:
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()
    return f"{digest} grpcio-tools {metadata.version('grpcio-tools')}\n"


def ensure_stubs() -> Path:
    """Makes sure _gen/ holds current stubs and is importable; returns it."""
    want = _fingerprint()
    have = STAMP.read_text() if STAMP.exists() else ""
    if have != want:
        tmp = Path(tempfile.mkdtemp(prefix="_gen.", dir=HERE))
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "grpc_tools.protoc",
                    f"--proto_path={HERE}",
                    f"--python_out={tmp}",
                    f"--grpc_python_out={tmp}",
                    str(PROTO),
                ],
                check=True,
            )
            (tmp / ".stamp").write_text(want)
            if OUT.exists():
                shutil.rmtree(OUT)
            os.replace(tmp, OUT)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if str(OUT) not in sys.path:
        # The generated proxy_pb2_grpc.py imports `proxy_pb2` as a top-level module.
        sys.path.insert(0, str(OUT))
    return OUT


if __name__ == "__main__":
    print(ensure_stubs())
