#!/usr/bin/env python
"""How far qlandmark-scalar's fp16 workspace logits move its masses from fp32 logits, on CPU.

Runs ``qscalar_mass`` under the Triton interpreter (no GPU) on random keys and queries, once with
fp16 and once with fp32 logits, and prints per query scale the largest relative error of the
masses (norm of the difference over norm of the fp32 masses, the tests' ``rel_err``) over the
cases, and the smallest overlap of the top-20 tokens per (request, KV head) row:

    python examples/fp16_logits_error.py                 # scales 1 4 8 16, 12 cases each
    python examples/fp16_logits_error.py --scales 1.5 --cases 4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "csrc_triton")]  # its conftest: rel_err, random cases

import torch  # noqa: E402

from conftest import rel_err  # noqa: E402
from test_triton_score_summary import make_case  # noqa: E402  (the kernel tests' random cases)
from vllm_kvoffload.ops import triton_kernels  # noqa: E402
from vllm_kvoffload.scorers.qlandmark import UNIFORM_STEP  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=float, nargs="+", default=[1, 4, 8, 16], help="query scales")
    p.add_argument("--cases", type=int, default=12, help="random cases per scale")
    p.add_argument("--top", type=int, default=20)
    a = p.parse_args()
    B, Hq, Hkv, D, bs, cold = 2, 16, 2, 128, 16, [40, 33]
    print(f"{'query scale':>12}{'max rel err':>14}{'min top-' + str(a.top) + ' overlap':>20}")
    for scale in a.scales:
        errs, overlaps = [], []
        for _ in range(a.cases):
            scorer, query, summaries, slots, lens = make_case("qlandmark-scalar", B, Hq, Hkv, D, bs, cold, "cpu")
            query = (query.float() * scale).to(torch.bfloat16)
            args = (scorer.rotated(query), summaries, UNIFORM_STEP, slots, lens, D ** -0.5)
            wide = triton_kernels.qscalar_mass(*args, logits_dtype=torch.float32)
            half = triton_kernels.qscalar_mass(*args, logits_dtype=torch.float16)
            valid = torch.isfinite(wide)
            errs.append(rel_err(half[valid], wide[valid]))
            for b, n in enumerate(cold):
                for h in range(Hkv):
                    w = set(wide[b, h, :n * bs].topk(a.top).indices.tolist())
                    f = set(half[b, h, :n * bs].topk(a.top).indices.tolist())
                    overlaps.append(len(w & f) / a.top)
        print(f"{scale:>12g}{max(errs):>14.2e}{min(overlaps):>20.2f}")


if __name__ == "__main__":
    main()
