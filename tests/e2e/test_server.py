"""`vllm serve <tiny model> --kv-offload=exact-topk` in a subprocess, driven by the
openai client. Afterwards the server is healthy and no block is leaked."""

import asyncio
import socket
import subprocess
import time

import httpx
import pytest

pytestmark = pytest.mark.slow
LONG = "".join(f"Entry {i}: the colour of box {i} is shade {i * 37 % 101}. " for i in range(40))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = ["vllm", "serve", tiny_llama, "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "4096",
           "--block-size", "32", "--kv-cache-memory-bytes", str(64 << 20), "--enforce-eager",
           "--kv-offload", "exact-topk", "--kv-offload-budget", "0.1",
           "--kv-offload-window-tokens", "64", "--kv-offload-host-blocks", "2048"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("server did not start:\n" + log.read_text()[-3000:])
        yield url
    finally:
        from vllm_kvoffload.demo import stop

        stop(proc)


def client(url):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="none")


def stats(url):
    return httpx.get(url + "/kv_offload/stats", timeout=30).json()


def test_completion_and_chat(server):
    c = client(server)
    out = c.completions.create(model="tiny", prompt=LONG, max_tokens=24, temperature=0)
    assert out.choices[0].text and out.usage.completion_tokens == 24 or out.choices[0].finish_reason == "stop"
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": LONG}],
                                     max_tokens=16, temperature=0)
    assert chat.choices[0].message.content is not None


def test_streaming(server):
    chunks = list(client(server).completions.create(model="tiny", prompt=LONG, max_tokens=20,
                                                    temperature=0, stream=True,
                                                    extra_body={"ignore_eos": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert len(chunks) >= 10 and text


def test_concurrent_requests_offload(server):
    from openai import AsyncOpenAI

    async def run():
        c = AsyncOpenAI(base_url=server + "/v1", api_key="none")
        jobs = [c.completions.create(model="tiny", prompt=f"{i} {LONG}", max_tokens=32, temperature=0,
                                     extra_body={"ignore_eos": True}) for i in range(8)]
        return await asyncio.gather(*jobs)

    before = stats(server)
    results = asyncio.run(run())
    assert len(results) == 8 and all(r.usage.completion_tokens == 32 for r in results)
    # counters, not samples of the pool while the requests run (a poller starved by a busy CI machine misses it)
    after = stats(server)
    assert after["host_blocks_offloaded_total"] > before["host_blocks_offloaded_total"], "no block went to the host pool"
    assert after["decode"]["tokens_gathered"] > before["decode"]["tokens_gathered"], "no decode read the host pool"


def test_client_disconnect_mid_stream(server):
    body = {"model": "tiny", "prompt": LONG, "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=60) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i >= 3:
                break  # drop the connection with the request still generating


def test_healthy_and_nothing_leaked(server):
    deadline = time.time() + 60
    while (s := stats(server))["requests"] and time.time() < deadline:
        time.sleep(0.5)
    assert httpx.get(server + "/health").status_code == 200
    print(f"\nblock accounting after all requests: {s}")
    assert s["enabled"] and s["requests"] == {}
    assert s["device_blocks_free"] == s["device_blocks_total"]
    assert s["host_blocks_free"] == s["host_blocks_total"] == 2048
    out = client(server).completions.create(model="tiny", prompt="still alive?", max_tokens=4)
    assert out.choices[0].text is not None
