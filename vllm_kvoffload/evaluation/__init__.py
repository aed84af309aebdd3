"""Offline evaluations of the offloading components (no vLLM engine needed).

* ``selection``: selection quality of every scorer on synthetic (or dumped) Q/K:
  ``python -m vllm_kvoffload.evaluation.selection --out docs/results/selection.json``.
"""
