"""Settings that need the model are checked when vLLM builds its config (vLLM wraps
the message in its own ValueError), before any
engine work, through vLLM's own EngineArgs (the path of `vllm serve` and `LLM`)."""

import pytest
from vllm.engine.arg_utils import EngineArgs



def config_for(model, **kv_offload):
    args = EngineArgs(model=model, max_model_len=1024, block_size=32, dtype="float32",
                      additional_config={"kv_offload": {"scorer": "exact-topk", **kv_offload}})
    return args.create_engine_config()


def test_window_larger_than_context_fails_at_startup(tiny_llama):
    with pytest.raises(ValueError, match=r"window_tokens=2048 .* context \(1024 tokens\)"):
        config_for(tiny_llama, window_tokens=2048)


def test_bad_budget_fails_at_startup(tiny_llama):
    with pytest.raises(ValueError, match=r"budget 0 must be positive"):
        config_for(tiny_llama, budget=0)


def test_offload_switches_scheduler_and_backend(tiny_llama):
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    cfg = config_for(tiny_llama, window_tokens=64)
    assert cfg.scheduler_config.scheduler_cls == "vllm_kvoffload.scheduler.OffloadScheduler"  # CPU: sync
    assert cfg.attention_config.backend == AttentionBackendEnum.CUSTOM
    assert not cfg.cache_config.enable_prefix_caching
    assert not cfg.use_v2_model_runner


def test_stock_stays_stock(tiny_llama):
    cfg = EngineArgs(model=tiny_llama, max_model_len=1024, block_size=32, dtype="float32").create_engine_config()
    assert cfg.scheduler_config.scheduler_cls in (None, "vllm.v1.core.sched.scheduler.Scheduler")
    assert cfg.attention_config.backend is None


def test_offload_keeps_async_scheduling_with_its_async_scheduler(tiny_llama):
    """vLLM's CPU platform turns async scheduling off; on GPU it is on by default, and the
    offload path then takes its async scheduler instead of turning it off."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler

    from vllm_kvoffload import plugin
    from vllm_kvoffload.scheduler import OffloadAsyncScheduler

    cfg = config_for(tiny_llama, window_tokens=64)
    cfg.scheduler_config.async_scheduling = True
    cfg.scheduler_config.scheduler_cls = None
    plugin.configure(cfg)
    assert cfg.scheduler_config.async_scheduling
    assert cfg.scheduler_config.get_scheduler_cls() is OffloadAsyncScheduler
    assert issubclass(OffloadAsyncScheduler, AsyncScheduler)
