"""Loader of the Triton kernels in ``csrc_triton`` (a top-level package installed
beside ``vllm_kvoffload``; from a bare checkout it is found by path) and lazy
re-export of their dispatch functions. Raises ImportError without triton."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

_DIR = Path(__file__).resolve().parents[2] / "csrc_triton"


def _package():
    if "csrc_triton" in sys.modules:
        return sys.modules["csrc_triton"]
    try:  # installed beside the package (pyproject ships csrc_triton*)
        return importlib.import_module("csrc_triton")
    except ImportError:
        pass
    init = _DIR / "__init__.py"
    if not init.is_file():
        raise ImportError(f"csrc_triton not found at {_DIR} (not shipped in the wheel; use a checkout)")
    spec = importlib.util.spec_from_file_location("csrc_triton", init, submodule_search_locations=[str(_DIR)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["csrc_triton"] = mod
    spec.loader.exec_module(mod)
    return mod


def load(name: str):
    """csrc_triton.<name>, e.g. load("sparse_decode")."""
    _package()
    return importlib.import_module(f"csrc_triton.{name}")


def load_from(root: str | Path, name: str):
    """csrc_triton.<name> of another checkout at ``root``, imported as the package
    ``csrc_triton_<hash of its path>`` beside this one's, so both trees' kernels run in one
    process (the GPU sweeps' ``--baseline``: paired timings, free of run-to-run noise)."""
    pkg_dir = Path(root).resolve() / "csrc_triton"
    init = pkg_dir / "__init__.py"
    if not init.is_file():
        raise ImportError(f"{root}: no csrc_triton/__init__.py there (expected another checkout's root)")
    alias = "csrc_triton_" + hashlib.sha1(str(pkg_dir).encode()).hexdigest()[:10]
    if alias not in sys.modules:
        spec = importlib.util.spec_from_file_location(alias, init, submodule_search_locations=[str(pkg_dir)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[alias] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(f"{alias}.{name}")


def __getattr__(attr: str):
    # lazy re-exports: importing this module does not import triton
    where = {
        "sparse_decode": "sparse_decode",
        "score_mass": "score",
        "quantize_fp8": "quantize",
        "dequantize_fp8": "quantize",
        "quantize_2bit_planar": "quantize",
        "topk_select": "topk",
        "gather_uva": "gather",
        "gather_copy_engine": "gather",
        "gather_inplace": "gather",
        "gather_lru": "gather",
        "qlandmark_mass": "score_summary",
        "infinigen_mass": "score_summary",
        "lrqk_mass": "score_summary",
        "qscalar_mass": "score_summary",
        "qscalar_default_decode": "score_summary",
        "summary_scoring_tiles": "score_summary",
    }
    if attr in where:
        fn = getattr(load(where[attr]), attr)
        globals()[attr] = fn  # later lookups skip this hook (it runs per kernel launch otherwise)
        return fn
    raise AttributeError(attr)
