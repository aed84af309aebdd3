import os

import pytest

# Tests share the small vLLM engines' start-up cost only within one process.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def tiny_llama():
    from vllm_kvoffload.tiny_model import default_model_path

    return str(default_model_path("llama"))


@pytest.fixture(scope="session")
def tiny_qwen3():
    from vllm_kvoffload.tiny_model import default_model_path

    return str(default_model_path("qwen3"))
