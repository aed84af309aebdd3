"""The one validated configuration of KV offloading.

It arrives as ``additional_config["kv_offload"]`` (from ``--kv-offload*`` flags,
``--additional-config`` or ``vllm.LLM(additional_config=...)``) and is parsed
once per process with :func:`KVOffloadConfig.from_additional_config`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_KEY = "kv_offload"
INVALID = "invalid KV offload configuration: "


class KVOffloadConfigError(ValueError):
    """A bad ``kv_offload`` setting. The message names the value and what is accepted."""


class KVOffloadConfig(BaseModel):
    """Settings of two-tier KV offloading. ``scorer="none"`` leaves vLLM stock."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scorer: str = "none"
    """Name of the scorer that ranks cold tokens (``none`` disables offload)."""

    budget: float = 0.03
    """Cold tokens attended per decode step and KV head: a fraction of the
    context in (0, 1], or a whole token count >= 1 when greater than 1."""

    sink_tokens: int = Field(default=4, ge=0)
    """Tokens at the start of the sequence that always stay on the device;
    rounded up to whole blocks."""

    window_tokens: int = Field(default=256, ge=1)
    """The most recent tokens that always stay on the device (the local window)."""

    granularity: Literal["token", "block"] = "token"
    """Select single tokens, or whole blocks scored by their best token."""

    host_blocks: int | None = Field(default=None, ge=1)
    """Capacity of the host pool in blocks; default sizes it from ``host_gb``."""

    host_gb: float = Field(default=4.0, gt=0)
    """Host-pool size in GiB when ``host_blocks`` is not given."""

    host_kv_dtype: Literal["auto", "fp8", "int4"] = "auto"
    """Storage of the offloaded K/V in the host pool. ``auto``: the model's KV dtype (exact).
    ``fp8``: float8 e4m3, saturated at +-448 with no scale (as vLLM's fp8 KV cache with its
    default scale of 1): half the host memory, so twice the requests per GiB, and half the
    PCIe bytes; attention then reads the fetched cold tokens rounded to fp8 (3 mantissa bits).
    ``int4``: 4 bits per element with one fp32 scale per token and KV head (``ops/int4_ref.py``;
    head sizes that are multiples of 8): a quarter of bf16's host memory and PCIe bytes, and
    half of fp8's address translations per miss (docs/performance.md, session 30). The scales live
    in device memory (4 bytes per token, KV head, K or V and layer: a 64 GiB pool of head size 128
    needs 4 GiB of them), so that a host row is one 64-byte read unit (session 31).
    Scoring is unaffected: the scorers summarize the exact keys before they are stored."""

    device_cache: bool = True
    """Keep each request's last selection per layer and KV head on the device, in place: tokens
    selected again stay where they are, so only new ones cross PCIe (GPU token path)."""

    device_cache_gb: float | None = Field(default=None, gt=0)
    """The most device memory, in GiB, that the device cache may take (GPU token path). The cache
    grows with the batch: a row per running offloaded request, as wide as the widest selection.
    A batch whose cache would pass this limit, or that the device cannot allocate, decodes without
    it until it fits again: in a one-layer scratch that reads every selected token from the host pool,
    or where even that does not fit, on the per-request path (slower, the same outputs either way);
    the server keeps running. Default: no limit but the device's free memory."""

    device_cache_factor: int = Field(default=1, ge=1, le=16)
    """Slots the device cache keeps per request, layer and KV head, as a multiple of the selection's
    width (GPU token path). 1: the last selection only, in place. Above 1: also tokens selected in
    earlier steps, least recently used out first, so a token that drops out of the selection and
    comes back is read from the device, not over PCIe; the cache takes this many times the memory
    (each request also keeps a map of its cold tokens: 4 bytes per token, layer and KV head)."""

    decode_graphs: bool = True
    """Run each offloaded layer's decode (score, select, fetch, attend) as one CUDA graph
    replay instead of about seven kernel launches, once a step shape repeats (GPU token path;
    off under VLLM_KVOFFLOAD_PROFILE, whose phase timers need eager launches); a shape whose
    capture fails stays eager, with a logged reason."""

    topp: float | None = Field(default=None, gt=0, le=1)
    """Adaptive budget: keep tokens until their estimated attention mass reaches
    this share (bounded above by ``budget``, below by ``topp_min_tokens``)."""

    topp_min_tokens: int = Field(default=1, ge=1)
    """With ``topp``: the fewest cold tokens kept per KV head (capped by the budget)."""

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, name: str) -> str:
        from vllm_kvoffload.scorers import available

        names = ["none", *available()]
        if name not in names:
            raise ValueError(f"unknown scorer {name!r}; accepted: {', '.join(names)}")
        return name

    @field_validator("budget", mode="before")
    @classmethod
    def _valid_budget(cls, value: Any) -> float:
        try:
            budget = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"budget {value!r} is not a number; accepted: a fraction in (0, 1] "
                "or a whole token count >= 1"
            ) from None
        if not math.isfinite(budget) or budget <= 0:
            raise ValueError(
                f"budget {value!r} must be positive; accepted: a fraction in (0, 1] "
                "or a whole token count >= 1"
            )
        if budget > 1 and budget != int(budget):
            raise ValueError(
                f"budget {value!r} is above 1 but not a whole token count; accepted: "
                "a fraction in (0, 1] or a whole token count >= 1"
            )
        return budget

    @property
    def enabled(self) -> bool:
        return self.scorer != "none"

    def budget_tokens(self, context_len: int) -> int:
        """Cold tokens to select for a sequence of ``context_len`` tokens."""
        if self.budget <= 1:
            return max(1, math.ceil(self.budget * context_len))
        return int(self.budget)

    def host_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The host pool's element type for a model whose KV cache has ``model_dtype``."""
        if self.host_kv_dtype == "int4":
            from vllm_kvoffload.ops.int4_ref import INT4

            return INT4
        return torch.float8_e4m3fn if self.host_kv_dtype == "fp8" else model_dtype

    def check_head_size(self, head_size: int) -> None:
        """4-bit rows pack pairs of elements and keep a 4-byte scale: the head size must be a multiple of 8."""
        if self.host_kv_dtype == "int4" and head_size % 8:
            raise KVOffloadConfigError(
                f"kv_offload: host_kv_dtype='int4' needs a head size that is a multiple of 8; this model's is "
                f"{head_size}. Accepted: host_kv_dtype 'auto' or 'fp8' for this model")

    def sink_blocks(self, block_size: int) -> int:
        return -(-self.sink_tokens // block_size)

    def check_against_model(self, max_model_len: int) -> None:
        """Checks that need the model: the resident span must leave room to offload."""
        if self.window_tokens >= max_model_len:
            raise KVOffloadConfigError(
                f"kv_offload window_tokens={self.window_tokens} is not smaller than the "
                f"model's context ({max_model_len} tokens); accepted: 1..{max_model_len - 1}"
            )
        if self.sink_tokens >= max_model_len:
            raise KVOffloadConfigError(
                f"kv_offload sink_tokens={self.sink_tokens} is not smaller than the "
                f"model's context ({max_model_len} tokens); accepted: 0..{max_model_len - 1}"
            )

    @classmethod
    def parse(cls, raw: Any) -> "KVOffloadConfig":
        """Validate a dict (or a scorer name) and raise one clear error."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            raw = {"scorer": raw}
        if not isinstance(raw, dict):
            raise KVOffloadConfigError(
                f"kv_offload config must be a JSON object, got {type(raw).__name__}: {raw!r}"
            )
        try:
            return cls(**raw)
        except ValidationError as err:
            raise KVOffloadConfigError(_explain(err)) from None

    @classmethod
    def from_additional_config(cls, additional_config: Any) -> "KVOffloadConfig":
        if not additional_config:
            return cls()
        return cls.parse(dict(additional_config).get(CONFIG_KEY))


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "kv_offload"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            known = ", ".join(KVOffloadConfig.model_fields)
            msg = f"unknown setting; accepted settings: {known}"
        elif e["type"] == "bool_parsing":
            msg = f"{e['input']!r} is not a boolean; accepted: true or false"
        elif "input" in e and not msg.startswith(("unknown scorer", "budget")):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(msg if msg.startswith(field) else f"{field}: {msg}")
    return INVALID + "; ".join(lines)
