"""Scorer registry: ``--kv-offload=<name>`` picks one of ``available()``."""

from __future__ import annotations

import importlib

from vllm_kvoffload.scorers.base import KVGeometry, Scorer

# name -> module that defines it; one scorer per file.
_MODULES = {
    "exact-topk": "vllm_kvoffload.scorers.exact_topk",
    "exact-topk-fp8": "vllm_kvoffload.scorers.exact_topk_fp8",
    "oracle": "vllm_kvoffload.scorers.oracle",
    "qlandmark": "vllm_kvoffload.scorers.qlandmark",
    "qlandmark-scalar": "vllm_kvoffload.scorers.qlandmark_scalar",
    "shadowkv": "vllm_kvoffload.scorers.shadowkv",
    "quest": "vllm_kvoffload.scorers.quest",
    "arkvale": "vllm_kvoffload.scorers.arkvale",
    "infinigen": "vllm_kvoffload.scorers.infinigen",
    "lrqk": "vllm_kvoffload.scorers.lrqk",
}
_REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names accepted by ``--kv-offload``."""
    return list(_MODULES)


def get_scorer_cls(name: str) -> type[Scorer]:
    if name not in _MODULES:
        raise ValueError(f"unknown scorer {name!r}; accepted: {', '.join(available())}")
    importlib.import_module(_MODULES[name])
    return _REGISTRY[name]


def create_scorer(name: str, geometry: KVGeometry) -> Scorer:
    return get_scorer_cls(name)(geometry)


__all__ = ["KVGeometry", "Scorer", "available", "create_scorer", "get_scorer_cls", "register"]
