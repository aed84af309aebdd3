"""One tiny-model vLLM server for every e2e test of the session; always killed at the end."""

import os

import pytest

from vllm_kvoffload.bench import server
from vllm_kvoffload.tiny_model import default_model_path

# An explicit KV size: the CPU backend's fraction-of-RAM sizing fails when the process
# already holds more than the fraction (as on small CI machines).
SERVER_ARGS = ["--dtype", "float32", "--max-model-len", "4096", "--block-size", "32",
               "--kv-cache-memory-bytes", str(256 << 20), "--enforce-eager"]


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return str(default_model_path())


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory):
    """Base URL (…/v1) of a stock vLLM OpenAI server on 127.0.0.1 serving the tiny model."""
    url = os.environ.get("BENCH_TEST_SERVER")  # reuse one already running, for quick iteration
    if url:
        yield url
        return
    port = server.free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with server.launch(server.server_cmd(tiny_model, port, None, SERVER_ARGS), port, log, 600) as url:
        yield url
