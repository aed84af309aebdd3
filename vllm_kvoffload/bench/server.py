"""Starting and stopping a local vLLM OpenAI server, one per ``--kv-offload`` setting."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def parse_setting(text: str) -> dict | None:
    """``"none"`` -> None (stock vLLM); ``"exact-topk:budget=0.03,window_tokens=128"`` ->
    ``{"scorer": "exact-topk", "budget": 0.03, "window_tokens": 128}``."""
    text = text.strip()
    if text == "none":
        return None
    scorer, _, rest = text.partition(":")
    if not scorer or "=" in scorer:
        raise ValueError(f"setting {text!r}: expected 'none' or 'SCORER[:key=value,...]', "
                         "e.g. 'exact-topk:budget=0.03'")
    cfg: dict = {"scorer": scorer}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"setting {text!r}: {item!r} is not key=value")
        try:
            cfg[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key.strip()] = value.strip()
    return cfg


def server_cmd(model: str, port: int, setting: dict | None, extra: list[str] = ()) -> list[str]:
    """The api_server command line; ``None`` (the ``none`` setting) passes no additional config."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--host", "127.0.0.1", "--port", str(port), *extra]
    if setting is not None:
        cmd += ["--additional-config", json.dumps({"kv_offload": setting})]
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(root: str) -> bool:
    try:
        with urllib.request.urlopen(f"{root}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def launch(cmd: list[str], port: int, log: str | Path, timeout: float = 600.0):
    """Start ``cmd`` in its own process group, wait for /health, yield the /v1 base URL;
    always kill the whole group on exit."""
    root = f"http://127.0.0.1:{port}"
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while not healthy(root):
            if proc.poll() is not None:
                tail = Path(log).read_text()[-3000:]
                raise RuntimeError(f"server exited with code {proc.returncode} before becoming "
                                   f"healthy; log {log}:\n{tail}")
            if time.time() > deadline:
                raise RuntimeError(f"server not healthy after {timeout:.0f} s; log {log}")
            time.sleep(1)
        yield f"{root}/v1"
    finally:  # the api_server forks engine processes: signal the group, not just the pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
