"""vllm-kvoffload: two-tier paged KV with per-token sparse selection for vLLM."""

__version__ = "0.1.0"
