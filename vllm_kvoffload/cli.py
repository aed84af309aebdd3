"""``--kv-offload*`` flags for ``vllm serve`` and friends, translated into
``additional_config["kv_offload"]`` so every process sees one configuration."""

from __future__ import annotations

import argparse
import json

from vllm_kvoffload.config import CONFIG_KEY, INVALID, KVOffloadConfig, KVOffloadConfigError
from vllm_kvoffload.scorers import available

# flag suffix -> config field
FLAGS = {
    "": "scorer",
    "-budget": "budget",
    "-sink-tokens": "sink_tokens",
    "-window-tokens": "window_tokens",
    "-granularity": "granularity",
    "-host-gb": "host_gb",
    "-host-blocks": "host_blocks",
    "-topp": "topp",
    "-topp-min-tokens": "topp_min_tokens",
    "-device-cache": "device_cache",
    "-device-cache-gb": "device_cache_gb",
    "-device-cache-factor": "device_cache_factor",
    "-decode-graphs": "decode_graphs",
    "-host-kv-dtype": "host_kv_dtype",
}


def _field_type(field: str):
    """argparse type: validates one setting with the config model's own rules."""

    def parse(text: str):
        try:
            return getattr(KVOffloadConfig.parse({field: text}), field)
        except KVOffloadConfigError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(INVALID)) from None

    parse.__name__ = field  # argparse names the type in its messages
    return parse


def add_flags(parser: argparse.ArgumentParser) -> None:
    d = KVOffloadConfig()
    group = parser.add_argument_group("KV offloading (vllm-kvoffload)",
                                      "Keep hot KV blocks on the device and cold ones in host memory.")
    group.add_argument("--kv-offload", dest="kv_offload", type=_field_type("scorer"), default=None,
                       metavar="SCORER",
                       help="Offload cold KV to host memory and select tokens with this scorer: "
                            f"{', '.join(['none', *available()])}. Default: none (stock vLLM).")
    group.add_argument("--kv-offload-budget", dest="kv_offload_budget", type=_field_type("budget"),
                       help="Cold tokens attended per decode step and KV head: a fraction of the "
                            f"context in (0, 1] or a whole token count >= 1. Default: {d.budget}.")
    group.add_argument("--kv-offload-sink-tokens", dest="kv_offload_sink_tokens",
                       type=_field_type("sink_tokens"),
                       help=f"First tokens always kept on the device (rounded up to blocks). "
                            f"Default: {d.sink_tokens}.")
    group.add_argument("--kv-offload-window-tokens", dest="kv_offload_window_tokens",
                       type=_field_type("window_tokens"),
                       help=f"Most recent tokens always kept on the device. Default: {d.window_tokens}.")
    group.add_argument("--kv-offload-granularity", dest="kv_offload_granularity",
                       type=_field_type("granularity"),
                       help="Select single tokens or whole blocks: token, block. Default: token.")
    group.add_argument("--kv-offload-host-gb", dest="kv_offload_host_gb", type=_field_type("host_gb"),
                       help=f"Host pool size in GiB. Default: {d.host_gb}.")
    group.add_argument("--kv-offload-host-blocks", dest="kv_offload_host_blocks",
                       type=_field_type("host_blocks"),
                       help="Host pool size in blocks (overrides --kv-offload-host-gb).")
    group.add_argument("--kv-offload-host-kv-dtype", dest="kv_offload_host_kv_dtype",
                       type=_field_type("host_kv_dtype"),
                       help="Storage of offloaded K/V: auto (the model's KV dtype, exact) or fp8 (e4m3: half "
                            "the host memory and PCIe bytes; attention reads cold tokens rounded to fp8). "
                            "Default: auto.")
    group.add_argument("--kv-offload-topp", dest="kv_offload_topp", type=_field_type("topp"),
                       help="Adaptive budget: keep cold tokens until their estimated attention "
                            "mass reaches this share in (0, 1]; the budget is the upper bound.")
    group.add_argument("--kv-offload-topp-min-tokens", dest="kv_offload_topp_min_tokens",
                       type=_field_type("topp_min_tokens"),
                       help="With --kv-offload-topp: the fewest cold tokens kept per KV head "
                            f"(an integer >= 1, capped by the budget). Default: {d.topp_min_tokens}.")
    group.add_argument("--kv-offload-device-cache", dest="kv_offload_device_cache",
                       action=argparse.BooleanOptionalAction, default=None,
                       help="Keep each request's last selection on the device, in place; only newly "
                            "selected tokens cross PCIe. Default: on.")
    group.add_argument("--kv-offload-device-cache-gb", dest="kv_offload_device_cache_gb",
                       type=_field_type("device_cache_gb"),
                       help="The most GPU memory in GiB the device cache may take; a batch whose cache "
                            "would not fit decodes without it until it does (slower, same outputs). "
                            "Default: no limit but the GPU's free memory.")
    group.add_argument("--kv-offload-device-cache-factor", dest="kv_offload_device_cache_factor",
                       type=_field_type("device_cache_factor"),
                       help="Device cache slots per request, layer and KV head, as a multiple of the "
                            "selection (an integer in 1-16). Above 1 it also keeps tokens selected in earlier "
                            "steps, least recently used out first, so fewer cross PCIe again; that many times "
                            f"the memory. Default: {d.device_cache_factor}.")
    group.add_argument("--kv-offload-decode-graphs", dest="kv_offload_decode_graphs",
                       action=argparse.BooleanOptionalAction, default=None,
                       help="Replay each offloaded layer's decode as a CUDA graph once the step's shape "
                            "repeats (GPU). Default: on.")


def flags_to_config(args: argparse.Namespace, additional_config: dict | None) -> dict | None:
    """Merge the flags over ``--additional-config``'s kv_offload entry (flags win)."""
    given = {field: getattr(args, "kv_offload" + suffix.replace("-", "_"), None)
             for suffix, field in FLAGS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return additional_config
    merged = dict(additional_config or {})
    base = merged.get(CONFIG_KEY) or {}
    if isinstance(base, str):
        base = json.loads(base)
    merged[CONFIG_KEY] = {**base, **given}
    if merged[CONFIG_KEY].get("scorer", "none") == "none" and len(given) > ("scorer" in given):
        raise KVOffloadConfigError(
            "--kv-offload-* settings were given without a scorer; add --kv-offload=SCORER "
            f"(accepted: {', '.join(available())})")
    KVOffloadConfig.parse(merged[CONFIG_KEY])  # fail at start-up, before any engine work
    return merged
