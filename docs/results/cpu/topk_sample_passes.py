"""Session 22, CPU: radix passes of the top-k's sample threshold with the exact early exit, and with a
stop once count(>= prefix) <= 2 x rank (an approximate threshold; not built), and the passes of the
selection on the resulting shortlist. Softmax rows from examples/gpu_topk.masses_for. Run from the
project root: python docs/results/cpu/topk_sample_passes.py"""
import sys, torch
sys.path.insert(0, "examples")
from gpu_topk import masses_for
def passes(bits, kk, bound=None):
    prefix = 0
    for p in range(8):
        shift = max(27 - 4 * p, 0); width = 31 - 4 * p - shift
        cands = [prefix | (d << shift) for d in range(1 << width)]
        cnt = [(bits >= c).sum().item() for c in cands]
        d = max(i for i, c in enumerate(cnt) if c >= kk)
        prefix |= d << shift
        if cnt[d] == kk: return p + 1, "exact", cnt[d]
        if bound and cnt[d] <= bound: return p + 1, "bound", cnt[d]
    return 8, "all", cnt[d]
for B, n in ((4, 32480), (2, 129712)):
    k = int(0.03 * n); lens = torch.full((B,), n, dtype=torch.int32)
    m = masses_for(lens, 8, n, torch.Generator().manual_seed(0), "softmax")
    for r in range(3):
        row = m[0, r, :n].contiguous()
        bits = row.view(torch.int32)
        sample = bits[::16][: n // 16]
        rank = min(len(sample), (k * 3 // 2) // 16 + 16)
        a = passes(sample, rank); b = passes(sample, rank, bound=2 * rank)
        tau = sample.sort(descending=True).values[rank - 1].item()
        short = bits[bits > tau]
        c = passes(short, k)
        print(n, "sample", rank, a, "bounded", b, "| shortlist", len(short), c)
