"""Selection-quality benchmark: how much of the true attention each scorer keeps.

    python -m vllm_kvoffload.evaluation.selection --out docs/results/selection.json

For every registered scorer and budget (1.5%, 3%, 6% of the cold context, per
KV head, top-k at token granularity) on seeded synthetic Q/K (or a dump with
``--qk``), over several consecutive decode steps, it reports:

* mass recall: share of the true softmax mass over the cold tokens that falls
  on the selected tokens (per query head, averaged);
* needle recall: share of the planted needles (the context's largest q.k per
  KV head) that are selected (a dump may give per-step needles, [steps, Hkv, M],
  -1 for none: then each step is scored on its own, steps without one skipped);
* output error: relative L2 error of attention over the selected cold tokens
  against attention over all cold tokens (cold-only, no resident tokens);
* device bytes per token: the scorer's summary, all layers of the reference
  model (Llama-3.1-8B: 32 layers, 8 KV heads, head_dim 128; bf16 K/V would be
  131072 B/token, its keys alone 65536);
* PCIe bytes per decode step for one 32K-token sequence of the reference
  model: the selected tokens' K+V (bf16) of every layer and KV head, times the
  miss rate of a simulated device cache for arkvale (pages, lowest-estimate
  eviction, 2x the budget) and lrqk (tokens, LRU, 2x the budget), measured on
  the synthetic steps after the first. ``qlandmark+kv4`` is qlandmark with the
  optional 4-bit offloaded K/V (its output error uses the dequantized K/V).

Synthetic Q/K (``synthetic_qk``) has the structure that breaks landmark
schemes: a per-head key bias, keys drawn around cluster centers in contiguous
segments (topical locality), a few large-magnitude low-frequency outlier
channels shared by Q and K, RoPE (theta 500000, rotate-half) on both at their
positions, queries aimed at one cluster per KV head with per-head and per-step
noise, and planted needles: single tokens set (after RoPE) ``needle_margin``
s.d. above the context's largest q.k for their head's query direction.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vllm_kvoffload.ops.select import select_cold_tokens
from vllm_kvoffload.scorers import KVGeometry, available, create_scorer

BUDGETS = (0.015, 0.03, 0.06)
REFERENCE = {"model": "Llama-3.1-8B", "layers": 32, "num_kv_heads": 8, "num_q_heads": 32,
             "head_dim": 128, "context": 32768, "block_size": 32, "kv_dtype": "bfloat16"}
KV4 = "qlandmark+kv4"
CACHED = {"arkvale": ("page", 2), "lrqk": ("lru", 2)}  # scorer -> (policy, capacity / budget)


@dataclass
class SyntheticQK:
    q: torch.Tensor        # [steps, Hq, D] post-RoPE
    k: torch.Tensor        # [Hkv, N, D] post-RoPE
    v: torch.Tensor        # [Hkv, N, D]
    needles: torch.Tensor  # [Hkv, M] token positions (or per step: [steps, Hkv, M], -1 = none)

    @property
    def scale(self) -> float:
        return self.q.shape[-1] ** -0.5


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE: x [..., n, D] at positions pos [n]."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = (pos.double()[:, None] * inv).float()
    cos, sin = ang.cos().repeat(1, 2), ang.sin().repeat(1, 2)
    rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def synthetic_qk(context: int = 32768, num_kv_heads: int = 8, num_q_heads: int = 32, head_dim: int = 128,
                 steps: int = 4, clusters: int = 64, outlier_channels: int = 4, needles: int = 4,
                 needle_margin: float = 0.25, query_gain: float = 0.6, rope_theta: float = 500000.0,
                 seed: int = 0) -> SyntheticQK:
    g = torch.Generator().manual_seed(seed)
    h, d, grp = num_kv_heads, head_dim, num_q_heads // num_kv_heads

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    # contiguous segments of 32..512 tokens, each drawn around one cluster center
    assign = torch.empty(h, context, dtype=torch.long)
    for head in range(h):
        pos = 0
        while pos < context:
            n = int(torch.randint(32, 513, (1,), generator=g))
            assign[head, pos : pos + n] = int(torch.randint(clusters, (1,), generator=g))
            pos += n
    bias = randn(h, 1, d)
    centers = 0.8 * randn(h, clusters, d)
    k = bias + centers.gather(1, assign[..., None].expand(-1, -1, d)) + 0.6 * randn(h, context, d)
    # queries: one target cluster per KV head, per-head and per-step noise
    target = torch.randint(clusters, (h,), generator=g)
    q_head = centers[torch.arange(h), target][:, None] + 0.5 * randn(h, grp, d)
    q = q_head[None] + 0.25 * randn(steps, h, grp, d)
    q = query_gain * q / q.norm(dim=-1, keepdim=True) * math.sqrt(d)
    # outlier channels: low-frequency RoPE pairs (high index), large in both Q and K
    chans = torch.arange(d // 2 - outlier_channels, d // 2)
    chans = torch.cat([chans, chans + d // 2])
    k[..., chans] *= 6.0
    q[..., chans] *= 3.0
    k = rope(k, torch.arange(context), rope_theta)
    q = rope(q.permute(1, 2, 0, 3), context + torch.arange(steps), rope_theta)  # [Hkv, grp, steps, D]
    q = q.transpose(1, 2)                                              # [Hkv, steps, grp, D]
    # needles: after RoPE, raise single tokens above the head's best q.k
    u = torch.nn.functional.normalize(q.mean((1, 2)), dim=-1)          # [Hkv, D]
    proj = torch.einsum("hnd,hd->hn", k, u)
    top = proj.amax(-1) + needle_margin * proj.std(-1)
    pos = torch.stack([torch.randperm(context, generator=g)[:needles] for _ in range(h)])
    for head in range(h):
        for p in pos[head].tolist():
            k[head, p] += (top[head] - proj[head, p]) * u[head]
    v = randn(h, context, d)
    return SyntheticQK(q.transpose(0, 1).reshape(steps, h * grp, d), k, v, pos.sort(-1).values)


def to_blocks(x: torch.Tensor, bs: int) -> torch.Tensor:
    h, n, d = x.shape
    return x[:, : n // bs * bs].reshape(h, n // bs, bs, d).transpose(0, 1).contiguous()


def cache_miss_rate(selected: list[torch.Tensor], scores: list[torch.Tensor], unit: int, capacity_factor: int,
                    policy: str) -> float:
    """Simulated device cache per KV head over consecutive steps. selected[t]:
    [Hkv, k] token ids; scores[t]: [Hkv, n] mass. Units are tokens (unit=1) or
    pages. Step 0 fills the cache (prefill); later steps count misses.
    ``lru`` evicts the least recently selected, ``page`` the lowest current score."""
    misses = total = 0
    for head in range(selected[0].shape[0]):
        cache: dict[int, int] = {}
        for t, sel in enumerate(selected):
            units = set((sel[head] // unit).tolist())
            cap = capacity_factor * len(units)
            if t:
                misses += len(units - cache.keys())
                total += len(units)
            for u in units:
                cache[u] = t
            if len(cache) > cap:
                if policy == "lru":
                    keep = sorted(cache, key=cache.get, reverse=True)[:cap]
                else:
                    s = scores[t][head]
                    page = torch.nn.functional.pad(s, (0, -len(s) % unit)).view(-1, unit).sum(-1)
                    keep = list(units) + sorted(set(cache) - units, key=lambda p: -float(page[p]))[: cap - len(units)]
                cache = {u: cache[u] for u in keep}
    return misses / max(total, 1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [Hq, D], k/v [Hkv, n, D] -> [Hq, D] (fp32)."""
    h, _, d = k.shape
    qg = q.float().view(h, -1, d)
    p = torch.softmax(torch.einsum("hgd,hnd->hgn", qg, k.float()) * scale, -1)
    return torch.einsum("hgn,hnd->hgd", p, v.float()).reshape(-1, d)


def evaluate(data: SyntheticQK, scorers: list[str], budgets=BUDGETS, block_size: int = 32,
             log=print) -> list[dict]:
    steps, hq, d = data.q.shape
    hkv, n, _ = data.k.shape
    n = n // block_size * block_size
    k, v = data.k[:, :n].bfloat16(), data.v[:, :n].bfloat16()
    if data.needles.dim() == 3:  # per step; positions cut off with the last partial block count as none
        needles = data.needles.masked_fill(data.needles >= n, -1)
    else:
        needles = data.needles[data.needles < n].view(hkv, -1) if data.needles.numel() else data.needles
    geom = KVGeometry(hkv, hq, d, block_size, torch.bfloat16)
    ref_geom = KVGeometry(REFERENCE["num_kv_heads"], REFERENCE["num_q_heads"], REFERENCE["head_dim"],
                          REFERENCE["block_size"], torch.bfloat16)
    kv_bytes = 2 * REFERENCE["head_dim"] * 2  # K + V of one token and KV head, bf16
    rows = []
    truth = []
    for t in range(steps):
        q = data.q[t].bfloat16()
        p = torch.softmax(torch.einsum("hgd,hnd->hgn", q.float().view(hkv, -1, d), k.float()) * data.scale, -1)
        truth.append((q, p, attention(q, k, v, data.scale)))
    cache: dict[str, list[torch.Tensor]] = {}  # base scorer -> masses per step
    for name in scorers:
        base = "qlandmark" if name == KV4 else name
        t0 = time.time()
        if base not in cache:
            scorer = create_scorer(base, geom)
            summaries = scorer.summarize(to_blocks(k, block_size))
            cache[base] = [scorer.score(q, summaries, data.scale) for q, _, _ in truth]
        masses = cache[base]
        roundtrip = None
        pcie_per_token = kv_bytes
        if name == KV4:
            from vllm_kvoffload.scorers.qlandmark import dequantize_kv4, kv4_bytes_per_token_head, quantize_kv4

            def roundtrip(x):  # only the gathered tokens travel in 4 bits
                return dequantize_kv4(*quantize_kv4(x))

            pcie_per_token = 2 * kv4_bytes_per_token_head(REFERENCE["head_dim"])
        device = create_scorer(base, ref_geom).summary_bytes_per_token() * REFERENCE["layers"]
        for budget in budgets:
            kk = math.ceil(budget * n)
            sel = [select_cold_tokens(m, kk)[0] for m in masses]
            mass_rec, out_err = [], []
            for (q, p, o_ref), idx in zip(truth, sel):
                mass_rec.append(p.gather(-1, idx[:, None, :].expand(-1, p.shape[1], -1)).sum(-1).mean().item())
                gk = k.gather(1, idx[..., None].expand(-1, -1, d))
                gv = v.gather(1, idx[..., None].expand(-1, -1, d))
                if roundtrip is not None:
                    gk, gv = roundtrip(gk), roundtrip(gv)
                o = attention(q, gk, gv, data.scale)
                out_err.append(((o - o_ref).norm() / o_ref.norm()).item())
            needle_rec = float("nan")
            if needles.numel():
                hit = []
                for t, idx in enumerate(sel):
                    nd = needles[t] if needles.dim() == 3 else needles
                    if (nd >= 0).any():
                        hit.append((idx[:, :, None] == nd[:, None, :]).any(1)[nd >= 0].float().mean().item())
                needle_rec = sum(hit) / len(hit) if hit else float("nan")
            miss = 1.0
            if base in CACHED and steps > 1:
                policy, factor = CACHED[base]
                unit = create_scorer(base, geom).page_size if policy == "page" else 1
                miss = cache_miss_rate(sel, masses, unit, factor, policy)
            ref_k = math.ceil(budget * REFERENCE["context"])
            pcie = ref_k * REFERENCE["num_kv_heads"] * REFERENCE["layers"] * pcie_per_token * miss
            rows.append({"scorer": name, "budget": budget, "tokens_selected": kk,
                         "mass_recall": sum(mass_rec) / len(mass_rec), "needle_recall": needle_rec,
                         "output_rel_error": sum(out_err) / len(out_err),
                         "device_bytes_per_token": device, "pcie_miss_rate": miss,
                         "pcie_bytes_per_step": pcie})
        log(f"  {name}: {time.time() - t0:.1f}s")
    return rows


def table(rows: list[dict]) -> str:
    head = ("| scorer | budget | mass recall | needle recall | output err | device B/token | "
            "PCIe MB/step (miss rate) |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['scorer']} | {100 * r['budget']:.1f}% | {r['mass_recall']:.3f} | "
                     f"{r['needle_recall']:.3f} | {r['output_rel_error']:.3f} | "
                     f"{r['device_bytes_per_token']:,.0f} | {r['pcie_bytes_per_step'] / 1e6:.1f} "
                     f"({r['pcie_miss_rate']:.2f}) |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = list(dict.fromkeys(r["scorer"] for r in rows))
    for name in names:
        rs = [r for r in rows if r["scorer"] == name]
        x = [100 * r["budget"] for r in rs]
        axes[0].plot(x, [r["mass_recall"] for r in rs], "o-", label=name)
        axes[1].plot(x, [r["needle_recall"] for r in rs], "o-", label=name)
        mid = rs[len(rs) // 2]
        axes[2].scatter(mid["device_bytes_per_token"] / 1024, mid["mass_recall"], label=name)
        axes[2].annotate(name, (mid["device_bytes_per_token"] / 1024, mid["mass_recall"]), fontsize=7)
    axes[0].set(xlabel="budget (% of cold tokens)", ylabel="attention-mass recall", title="mass recall")
    axes[1].set(xlabel="budget (% of cold tokens)", ylabel="needle recall", title="needle recall")
    axes[2].set(xlabel="device KiB per token (32 layers)", ylabel="mass recall at 3%", xscale="log",
                title="recall vs device bytes")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def load_qk(path: str) -> SyntheticQK:
    """A dump of real Q/K: ``torch.save({"q": [steps, Hq, D], "k": [Hkv, N, D],
    "v": optional, "needles": optional [Hkv, M] or [steps, Hkv, M]}, path)`` (post-RoPE;
    other keys are ignored; ``evaluation/qk_dump.py`` writes them from the trained model)."""
    d = torch.load(path, map_location="cpu")
    v = d.get("v", torch.randn_like(d["k"]))
    needles = d.get("needles", torch.empty(d["k"].shape[0], 0, dtype=torch.long))
    return SyntheticQK(d["q"].float(), d["k"].float(), v.float(), needles)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/selection.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: next to --out)")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--scorers", nargs="+", default=[*available(), KV4])
    ap.add_argument("--qk", default=None, help="evaluate a Q/K dump instead of synthetic data")
    args = ap.parse_args(argv)

    t0 = time.time()
    if args.qk:
        data, source = load_qk(args.qk), {"qk": args.qk}
    else:
        params = dict(context=args.context, num_kv_heads=args.kv_heads, num_q_heads=args.q_heads,
                      head_dim=args.head_dim, steps=args.steps, seed=args.seed)
        data, source = synthetic_qk(**params), {"synthetic": params}
    print(f"data: q {tuple(data.q.shape)}, k {tuple(data.k.shape)} ({time.time() - t0:.1f}s)")
    rows = evaluate(data, args.scorers, tuple(args.budgets))
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m vllm_kvoffload.evaluation.selection " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text(json.dumps({"command": command.strip(), "reference": REFERENCE, "data": source,
                               "cache_simulation": {k: {"policy": p, "capacity_x_budget": f}
                                                    for k, (p, f) in CACHED.items()},
                               "results": rows}, indent=1) + "\n")
    plot(rows, Path(args.plot) if args.plot else out.with_suffix(".png"))
    print(f"wrote {out} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
