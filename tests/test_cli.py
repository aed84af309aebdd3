"""The flags reach vLLM's own parser, and bad values stop `vllm serve` with a clear error."""

import argparse
import subprocess

import pytest

from vllm_kvoffload.cli import add_flags, flags_to_config
from vllm_kvoffload.config import KVOffloadConfigError


def parse(*argv):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser)
    return parser.parse_args(list(argv))


def test_flags_become_additional_config():
    args = parse("--kv-offload", "exact-topk", "--kv-offload-budget", "0.1", "--kv-offload-window-tokens", "64")
    merged = flags_to_config(args, {"other": 1, "kv_offload": {"sink_tokens": 8}})
    assert merged == {"other": 1, "kv_offload": {"sink_tokens": 8, "scorer": "exact-topk",
                                                 "budget": 0.1, "window_tokens": 64}}


def test_device_cache_flag_turns_the_cache_off_and_on():
    off = flags_to_config(parse("--kv-offload", "exact-topk", "--no-kv-offload-device-cache"), None)
    assert off["kv_offload"]["device_cache"] is False
    on = flags_to_config(parse("--kv-offload", "exact-topk", "--kv-offload-device-cache"), None)
    assert on["kv_offload"]["device_cache"] is True
    assert "device_cache" not in flags_to_config(parse("--kv-offload", "exact-topk"), None)["kv_offload"]


def test_host_kv_dtype_flag():
    args = parse("--kv-offload", "exact-topk", "--kv-offload-host-kv-dtype", "fp8")
    assert flags_to_config(args, None)["kv_offload"]["host_kv_dtype"] == "fp8"
    with pytest.raises(argparse.ArgumentError, match="host_kv_dtype: Input should be 'auto', 'fp8' or 'int4' .got 'fp16'."):
        parse("--kv-offload", "exact-topk", "--kv-offload-host-kv-dtype", "fp16")


def test_no_flags_leave_config_alone():
    assert flags_to_config(parse(), None) is None


def test_settings_without_scorer_are_refused():
    with pytest.raises(KVOffloadConfigError, match="without a scorer"):
        flags_to_config(parse("--kv-offload-budget", "0.1"), None)


@pytest.mark.slow
def test_vllm_serve_help_lists_flags():
    out = subprocess.run(["vllm", "serve", "--help=all"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in ("--kv-offload ", "--kv-offload-budget", "--kv-offload-sink-tokens",
                 "--kv-offload-window-tokens", "--kv-offload-granularity", "--kv-offload-topp",
                 "--kv-offload-topp-min-tokens", "--kv-offload-device-cache", "--kv-offload-host-kv-dtype",
                 "--kv-offload-decode-graphs"):
        assert flag in out.stdout, flag
    assert "exact-topk" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("flag, value, words", [
    ("--kv-offload", "bogus", ["unknown scorer 'bogus'", "accepted"]),
    ("--kv-offload-budget", "0", ["argument --kv-offload-budget: budget '0' must be positive", "(0, 1]"]),
])
def test_vllm_serve_rejects_bad_flags(tiny_llama, flag, value, words):
    out = subprocess.run(["vllm", "serve", tiny_llama, flag, value], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    for w in words:
        assert w in out.stderr, out.stderr[-2000:]
