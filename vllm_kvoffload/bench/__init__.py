"""Rerunnable benchmarks against any OpenAI-compatible server: ``python -m vllm_kvoffload.bench``."""
