"""Loggers of this package, inside vLLM's logging tree.

vLLM configures one logger, ``vllm`` (level, handler, format: ``VLLM_LOGGING_LEVEL`` and
friends). A logger named after our modules (``vllm_kvoffload.runtime``) is outside that tree:
it inherits the root's WARNING level and no handler, so its info lines are dropped. Ours are
named ``vllm.kvoffload.<module>`` and so follow vLLM's configuration, whenever it is applied.
"""

from vllm.logger import init_logger


def get_logger(module: str):
    """The logger of one of our modules (pass ``__name__``)."""
    return init_logger("vllm.kvoffload." + module.removeprefix("vllm_kvoffload."))
