"""Serve the embedded model with offload on, talk to it, show the block counts.

    python -m vllm_kvoffload.demo            # serve, send a few requests, keep serving
    python -m vllm_kvoffload.demo --once     # same, then stop (a smoke test)

The server is plain `vllm serve MODEL --kv-offload=exact-topk ...`; the command
line is printed so you can run it yourself.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from vllm_kvoffload.bench import needle
from vllm_kvoffload.tiny_model import default_model_path
from vllm_kvoffload.training.data import count_bytes

PROMPT = "".join(f"Entry {i}: the colour of box {i} is shade {i * 37 % 101}. " for i in range(40))
NEEDLE_CONTEXT = 3000  # prompt tokens of the chat request: most of its KV leaves the device


def needle_question() -> dict:
    """A held-out multi-needle sample (the benchmark's seed 0; byte-level tokens = bytes)."""
    return needle.generate(1, NEEDLE_CONTEXT, 0, count_bytes, needles=8)[0]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def serve_command(model: str, port: int, scorer: str, budget: float) -> list[str]:
    return ["vllm", "serve", model, "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "4096",
            "--block-size", "32", "--kv-cache-memory-bytes", str(256 << 20), "--enforce-eager",
            f"--kv-offload={scorer}", "--kv-offload-budget", str(budget),
            "--kv-offload-window-tokens", "64", "--kv-offload-host-gb", "0.25",
            "--shutdown-timeout", "10"]  # drain on SIGTERM (0, the default, aborts the engine and logs an error)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the embedded model with KV offload.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--scorer", default="exact-topk")
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--once", action="store_true", help="stop after the demo requests")
    args = parser.parse_args()

    model = str(default_model_path("llama"))
    cmd = serve_command(model, args.port, args.scorer, args.budget)
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                sys.exit(f"vllm serve exited with code {proc.returncode}")
            try:
                _get(base + "/kv_offload/stats")
                break
            except OSError:
                time.sleep(1)
        from openai import OpenAI

        client = OpenAI(base_url=base + "/v1", api_key="none")
        out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=32, temperature=0,
                                        extra_body={"ignore_eos": True})
        print(f"completion ({out.usage.prompt_tokens} prompt tokens): {out.choices[0].text!r}")
        print("(raw text: the model was trained on chat prompts only, so a completion is noise)")
        sample = needle_question()
        chat = client.chat.completions.create(model="tiny", max_tokens=300, temperature=0,
                                              messages=[{"role": "user", "content": sample["prompt"]}])
        answer = chat.choices[0].message.content
        found = needle.score_one(answer, sample)
        print(f"chat, a needle question ({chat.usage.prompt_tokens} prompt tokens, budget {args.budget}):")
        print("  question: " + sample["prompt"].rsplit("\n", 1)[-1][:200])
        print("  answer:   " + answer.replace("\n", "\n            "))
        print(f"  codes found: {sum(found['hits'])} of {len(found['hits'])}")
        print("block accounting and decode reads:", json.dumps(_get(base + "/kv_offload/stats"), indent=1))
        if not args.once:
            print(f"serving on {base} (OpenAI API); Ctrl-C to stop", flush=True)
            proc.wait()
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the API server (it shuts its engine down), then sweep its group. Even with the drain,
    vLLM 0.32 may log an "AsyncLLM output_handler failed ... EngineDeadError" traceback as it stops:
    a race in its own shutdown (vllm-project/vllm#48745), after every request has finished."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main()
