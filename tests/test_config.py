"""Every bad setting fails at start-up with a message naming the value and what is accepted."""

import pytest

from vllm_kvoffload.config import KVOffloadConfig, KVOffloadConfigError
from vllm_kvoffload.scorers import available


def test_defaults_are_stock():
    cfg = KVOffloadConfig.from_additional_config(None)
    assert not cfg.enabled and cfg.scorer == "none"


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"scorer": "magic"}, ["unknown scorer 'magic'", "exact-topk", "oracle"]),
        ({"scorer": "exact-topk", "budget": 0}, ["budget 0", "(0, 1]", "token count"]),
        ({"scorer": "exact-topk", "budget": -0.5}, ["budget -0.5", "must be positive"]),
        ({"scorer": "exact-topk", "budget": "lots"}, ["budget 'lots'", "not a number"]),
        ({"scorer": "exact-topk", "budget": 12.5}, ["budget 12.5", "whole token count"]),
        ({"scorer": "exact-topk", "window_tokens": -4}, ["window_tokens", "greater than or equal to 1", "-4"]),
        ({"scorer": "exact-topk", "sink_tokens": "x"}, ["sink_tokens", "'x'"]),
        ({"scorer": "exact-topk", "granularity": "page"}, ["granularity", "'token'", "'block'", "'page'"]),
        ({"scorer": "exact-topk", "topp": 1.5}, ["topp", "1.5"]),
        ({"scorer": "exact-topk", "topp_min_tokens": 0}, ["topp_min_tokens", "greater than or equal to 1", "0"]),
        ({"scorer": "exact-topk", "bugdet": 0.1}, ["bugdet", "unknown setting", "budget"]),
        ({"scorer": "exact-topk", "host_kv_dtype": "int2"}, ["host_kv_dtype", "'auto', 'fp8' or 'int4'", "'int2'"]),
        ({"scorer": "exact-topk", "device_cache_factor": 0}, ["device_cache_factor", "greater than or equal to 1"]),
        ({"scorer": "exact-topk", "device_cache_factor": 17}, ["device_cache_factor", "less than or equal to 16"]),
        ([1, 2], ["JSON object"]),
    ],
)
def test_bad_values_are_named(raw, words):
    with pytest.raises(KVOffloadConfigError) as err:
        KVOffloadConfig.parse(raw)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_budget_forms():
    frac = KVOffloadConfig.parse({"scorer": "exact-topk", "budget": "0.1"})
    assert frac.budget_tokens(1000) == 100 and frac.budget_tokens(5) == 1
    count = KVOffloadConfig.parse({"scorer": "exact-topk", "budget": 64})
    assert count.budget_tokens(1000) == 64


def test_window_must_fit_the_model():
    cfg = KVOffloadConfig.parse({"scorer": "exact-topk", "window_tokens": 4096})
    with pytest.raises(KVOffloadConfigError, match=r"window_tokens=4096 .* context \(4096 tokens\)"):
        cfg.check_against_model(4096)
    cfg.check_against_model(8192)


def test_scorer_names():
    assert {"exact-topk", "oracle"} <= set(available())


def test_device_cache_must_be_a_boolean():
    with pytest.raises(KVOffloadConfigError, match="'maybe' is not a boolean; accepted: true or false"):
        KVOffloadConfig.parse({"scorer": "exact-topk", "device_cache": "maybe"})
    assert KVOffloadConfig.parse({"scorer": "exact-topk"}).device_cache is True


def test_host_kv_dtype_sets_the_pool_element_type():
    import torch

    assert KVOffloadConfig.parse({"scorer": "exact-topk"}).host_dtype(torch.bfloat16) == torch.bfloat16
    fp8 = KVOffloadConfig.parse({"scorer": "exact-topk", "host_kv_dtype": "fp8"})
    assert fp8.host_dtype(torch.bfloat16) == fp8.host_dtype(torch.float32) == torch.float8_e4m3fn
