"""moto_server (PyPI ``moto[server]``) on 127.0.0.1: a real EC2 API for the cloud import."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

FIX = "install the test extra (moto[server]): scripts/test does"


def moto_missing() -> str | None:
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists() and shutil.which("moto_server") is None:
        return "moto_server is not installed"
    return None


def start(port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe if exe.exists() else "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not listen within 30 s")
