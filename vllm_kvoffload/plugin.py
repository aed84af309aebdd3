"""vLLM general-plugin entry point. Runs in every vLLM process (front end before
argument parsing, engine core, workers). With ``kv_offload`` off it only adds the
CLI flags; every other hook checks the current config and steps aside."""


import dataclasses
import functools

import torch

from vllm_kvoffload.config import KVOffloadConfig, KVOffloadConfigError
from vllm_kvoffload.logs import get_logger

logger = get_logger(__name__)
SCHEDULER_CLS = "vllm_kvoffload.scheduler.OffloadScheduler"
ASYNC_SCHEDULER_CLS = "vllm_kvoffload.scheduler.OffloadAsyncScheduler"
STOCK_SCHEDULER_CLS = ("vllm.v1.core.sched.scheduler.Scheduler", "vllm.v1.core.sched.async_scheduler.AsyncScheduler")
CPU_BACKEND = "vllm_kvoffload.attention.backend.OffloadCPUBackend"
GPU_BACKEND = "vllm_kvoffload.attention.backend_cuda.OffloadFlashAttentionBackend"
_registered = False


def offload_config(vllm_config=None) -> KVOffloadConfig:
    if vllm_config is None:
        from vllm.config import get_current_vllm_config_or_none

        vllm_config = get_current_vllm_config_or_none()
    if vllm_config is None:
        return KVOffloadConfig()
    return KVOffloadConfig.from_additional_config(vllm_config.additional_config)


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    _patch_cli()
    _patch_platform()
    _patch_model_runner_choice()
    from vllm_kvoffload.kv_spec import register_spec

    register_spec()
    _patch_kv_cache_spec()
    _patch_model_runner()
    _patch_engine_core()
    _patch_api_server()


# ---- front end: flags -> additional_config -----------------------------------------
def _patch_cli() -> None:
    from vllm.engine.arg_utils import EngineArgs

    from vllm_kvoffload.cli import add_flags, flags_to_config

    add_cli_args = EngineArgs.add_cli_args
    from_cli_args = EngineArgs.from_cli_args.__func__

    @functools.wraps(add_cli_args)
    def add_cli_args_with_offload(parser, *args, **kwargs):
        parser = add_cli_args(parser, *args, **kwargs)
        if not any(a.dest == "kv_offload" for a in parser._actions):
            add_flags(parser)
        return parser

    def from_cli_args_with_offload(cls, args):
        engine_args = from_cli_args(cls, args)
        engine_args.additional_config = flags_to_config(args, engine_args.additional_config)
        return engine_args

    EngineArgs.add_cli_args = staticmethod(add_cli_args_with_offload)
    EngineArgs.from_cli_args = classmethod(from_cli_args_with_offload)


# ---- config: validate, pick scheduler and backend ----------------------------------
def configure(vllm_config) -> None:
    """Validate ``kv_offload`` against the model and switch vLLM to the offload path."""
    cfg = offload_config(vllm_config)
    if not cfg.enabled:
        return
    model = vllm_config.model_config
    if model is None:
        return
    if model.use_mla:
        raise KVOffloadConfigError(
            f"kv_offload does not support MLA models ({model.model}); accepted: models with "
            "standard multi-head/GQA attention such as Llama-3 and Qwen3")
    cfg.check_against_model(model.max_model_len)
    if vllm_config.speculative_config is not None:
        raise KVOffloadConfigError("kv_offload does not support speculative decoding yet; "
                                   "drop --speculative-config or use --kv-offload=none")
    sched = vllm_config.scheduler_config
    # vLLM has resolved async scheduling by now (on by default on GPU); keep its choice
    ours = ASYNC_SCHEDULER_CLS if sched.async_scheduling else SCHEDULER_CLS
    if sched.scheduler_cls not in (None, SCHEDULER_CLS, ASYNC_SCHEDULER_CLS, *STOCK_SCHEDULER_CLS):
        logger.warning("kv_offload replaces --scheduler-cls %s with %s", sched.scheduler_cls, ours)
    sched.scheduler_cls = ours
    if vllm_config.cache_config.enable_prefix_caching:
        logger.info("kv_offload: prefix caching is turned off (offloaded blocks leave the device)")
        vllm_config.cache_config.enable_prefix_caching = False
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    # CUSTOM is our backend on every platform (and a distinct key in vLLM's
    # backend-selection cache, so stock engines in the same process stay stock).
    vllm_config.attention_config.backend = AttentionBackendEnum.CUSTOM


def _patch_model_runner_choice() -> None:
    """Our worker hooks live in the V1 model runner: tell vLLM that Model Runner V2
    does not support offload, so vLLM itself picks V1 and logs why."""
    from vllm.config import VllmConfig

    unsupported = VllmConfig._get_v2_model_runner_unsupported_features

    def _get_v2_model_runner_unsupported_features(self):
        features = list(unsupported(self))
        if offload_config(self).enabled:
            features.append("kv_offload")
        return features

    VllmConfig._get_v2_model_runner_unsupported_features = _get_v2_model_runner_unsupported_features


def _patch_platform() -> None:
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    check = platform_cls.check_and_update_config

    def check_and_update_config(cls, vllm_config):
        check(vllm_config)
        configure(vllm_config)

    platform_cls.check_and_update_config = classmethod(check_and_update_config)

    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if current_platform.is_cpu():
        register_backend(AttentionBackendEnum.CUSTOM, CPU_BACKEND)
        # The CPU platform ignores CUSTOM and always answers CPU_ATTN: answer for it.
        get_backend = platform_cls.get_attn_backend_cls

        def get_attn_backend_cls(cls, selected_backend, attn_selector_config, *args, **kwargs):
            if selected_backend == AttentionBackendEnum.CUSTOM and not attn_selector_config.use_mla:
                return CPU_BACKEND
            return get_backend(selected_backend, attn_selector_config, *args, **kwargs)

        platform_cls.get_attn_backend_cls = classmethod(get_attn_backend_cls)
    else:
        register_backend(AttentionBackendEnum.CUSTOM, GPU_BACKEND)


# ---- worker: layer specs, runtime, plan execution -------------------------------------
def _host_blocks(cfg: KVOffloadConfig, page_bytes: int, num_layers: int, dtype: torch.dtype,
                 head_size: int) -> int:
    """Host slots in ``host_gb``: one slot holds a device page (``page_bytes`` of ``dtype``) of
    every offloaded layer, in the host pool's element type (4-bit: D/2 bytes per D elements on the host;
    their scales, 4 bytes per row, in device memory, are not counted here)."""
    if cfg.host_blocks:
        return cfg.host_blocks
    cfg.check_head_size(head_size)
    if cfg.host_kv_dtype == "int4":
        from vllm_kvoffload.ops.int4_ref import nibble_bytes

        page_bytes = page_bytes * nibble_bytes(head_size) // (head_size * dtype.itemsize)
    else:
        page_bytes = page_bytes * cfg.host_dtype(dtype).itemsize // dtype.itemsize
    blocks = int(cfg.host_gb * 2**30) // max(1, page_bytes * num_layers)
    if blocks < 1:
        raise KVOffloadConfigError(
            f"kv_offload host_gb={cfg.host_gb} holds no block ({page_bytes * num_layers} bytes "
            "each); accepted: a larger --kv-offload-host-gb or --kv-offload-host-blocks")
    return blocks


def _patch_kv_cache_spec() -> None:
    from vllm.config import get_layers_from_vllm_config
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from vllm_kvoffload.attention.backend import OffloadImplMixin
    from vllm_kvoffload.kv_spec import OffloadAttentionSpec
    from vllm_kvoffload.runtime import runtime_for_layer

    get_spec = Attention.get_kv_cache_spec

    def get_kv_cache_spec(self, vllm_config):
        spec = get_spec(self, vllm_config)
        if type(spec) is not FullAttentionSpec or not getattr(self.impl, "offloaded", False):
            return spec
        assert isinstance(self.impl, OffloadImplMixin)
        cfg = offload_config(vllm_config)
        layers = [l for l in get_layers_from_vllm_config(vllm_config, Attention).values()
                  if getattr(l.impl, "offloaded", False)]
        runtime_for_layer(cfg, spec.block_size, self.layer_name, self)
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
        return OffloadAttentionSpec(**fields, sink_tokens=cfg.sink_tokens, window_tokens=cfg.window_tokens,
                                    host_blocks=_host_blocks(cfg, spec.page_size_bytes, len(layers), spec.dtype,
                                                             spec.head_size))

    Attention.get_kv_cache_spec = get_kv_cache_spec


def _patch_model_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_kvoffload.runtime import current_runtime

    update_states = GPUModelRunner._update_states

    def _update_states(self, scheduler_output):
        runtime = current_runtime()
        if runtime is not None:
            runtime.runner = self
            plan = getattr(scheduler_output, "kv_offload_plan", None)
            if plan is not None:
                # Before vLLM may zero or overwrite the blocks the scheduler just freed.
                spec = self.kv_cache_config.kv_cache_groups[0].kv_cache_spec
                runtime.apply_plan(plan, spec.host_blocks)
        return update_states(self, scheduler_output)

    GPUModelRunner._update_states = _update_states

    from vllm_kvoffload.kv_spec import OffloadAttentionSpec

    initialize = GPUModelRunner.initialize_kv_cache  # the CPU runner's calls it too (super())

    def initialize_kv_cache(self, kv_cache_config, *args, **kwargs):
        # After vLLM allocates and binds the KV caches at start-up (not in a profiling run), the
        # host pool is allocated too: a pool the host cannot pin fails the start, clearly.
        initialize(self, kv_cache_config, *args, **kwargs)
        is_profiling = kwargs.get("is_profiling", args[0] if args else False)
        runtime = current_runtime()
        groups = kv_cache_config.kv_cache_groups
        if runtime is not None and not is_profiling and groups and isinstance(groups[0].kv_cache_spec,
                                                                              OffloadAttentionSpec):
            runtime.prepare_pool(groups[0].kv_cache_spec.host_blocks, self.max_num_reqs, self.max_model_len)

    GPUModelRunner.initialize_kv_cache = initialize_kv_cache


# ---- stats: engine-core utility + HTTP endpoint -----------------------------------------
def _patch_engine_core() -> None:
    from vllm.v1.engine.core import EngineCore

    def kv_offload_stats(self):
        scheduler = self.scheduler
        if not hasattr(scheduler, "kv_offload_stats"):
            return {"enabled": False}
        return {"enabled": True, **scheduler.kv_offload_stats(),
                "decode": _sum_counters(self.model_executor.collective_rpc(worker_fetch_stats))}

    EngineCore.kv_offload_stats = kv_offload_stats


def worker_fetch_stats(worker) -> dict | None:
    """Run in each worker (``collective_rpc``): its offload runtime's decode counters, None before
    any layer offloads."""
    from vllm_kvoffload.runtime import current_runtime

    runtime = current_runtime()
    return runtime.fetch_stats() if runtime is not None else None


def _sum_counters(per_worker: list[dict | None]) -> dict:
    """The workers' decode counters added up (tensor-parallel ranks each hold some KV heads), with the
    hit rate of the sums."""
    stats = [s for s in per_worker if s is not None]
    gathered = sum(s["tokens_gathered"] for s in stats)
    hits = sum(s["cache_hits"] for s in stats)
    return {"tokens_gathered": gathered, "cache_hits": hits, "cache_hit_rate": hits / gathered if gathered else None,
            # every rank runs the same steps
            "steps_without_device_cache": max((s["steps_without_device_cache"] for s in stats), default=0)}


def _patch_api_server() -> None:
    try:
        from vllm.entrypoints.launchers.api_server import entry
    except ImportError:  # pragma: no cover - layout of other vLLM versions
        return
    build_app = entry.build_app

    def build_app_with_stats(*args, **kwargs):
        app = build_app(*args, **kwargs)
        from fastapi import Request

        @app.get("/kv_offload/stats")
        async def kv_offload_stats(request: Request):
            """Device and host block accounting of the offload tiers."""
            client = request.app.state.engine_client
            return await client.engine_core.call_utility_async("kv_offload_stats")

        return app

    entry.build_app = build_app_with_stats
