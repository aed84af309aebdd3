#!/usr/bin/env python
"""What a step's misses cost on the H100, as a model fitted to session 30's probe and checked against
every gather and engine figure since session 27 (CPU only: it reads the stored results).

A zero-copy read of n rows of 256 bytes (an fp8 token's K and V) that touch g distinct 64 KiB regions
of pinned host memory takes about

    t = a + max(n x 256 B / BW, g x c)

(a: launch and latency; BW: the rows' PCIe bandwidth; c: one address translation per 64 KiB region),
fitted to call 30b's pinned read sets, where n and g vary independently. Misses drawn at random from
a (request, KV head)'s span of G regions touch G x (1 - exp(-m / G)) of them: nearly all from a few
misses per region on, so a cache that halves the misses leaves the translations nearly as they were.

    python docs/results/gpu/session30/miss_cost_model.py   # writes docs/results/miss-cost-model.png

It ends with what the model predicts for a 4-bit pool (not built): a row of 136 bytes per token and KV
head, so fewer bytes per miss and fewer regions per (request, KV head).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1]
ROW = 256  # bytes per miss: K and V of one token, fp8, head size 128
REGION_TOKENS = 64 * 1024 // ROW  # 256 tokens of one (request, KV head) per 64 KiB region
WARM = 10000  # gathers of fewer misses ran with warm translations (checks())
PROFILE_99 = RESULTS / "gpu/session30/profile-128k-miss001-call30g"  # 99% hits: the step less its fills


def model(x, rows, regions):
    a, bw, c = x
    return a + np.maximum(rows * ROW / (bw * 1e3), regions * c / 1e3)  # us; bw in GB/s, c in ns


def fit(probe):
    rows = np.array([r["rows"] for r in probe], float)
    regions = np.array([r["regions_64k"] for r in probe], float)
    us = np.array([r["us"] for r in probe])
    res = least_squares(lambda x: (model(x, rows, regions) - us) / us, [30, 46, 20])
    return res.x, res.fun


def regions_touched(misses_per_head, span_tokens, heads):
    g = math.ceil(span_tokens / REGION_TOKENS)
    return heads * g * (1 - math.exp(-misses_per_head / g))


def fill_us(profile_txt, kernel):
    """A fill kernel's mean CUDA time per launch (one layer) from a torch profiler table."""
    for line in Path(profile_txt).read_text().splitlines():
        if line.strip().startswith(kernel + " "):
            return float(re.findall(r"([\d.]+)us", line)[-1])
    raise SystemExit(f"{kernel} not in {profile_txt}")


def checks(x):
    """(group, label, rows, regions, measured us) for the gathers of call 30a and the engine's fills.
    The gathers of fewer than WARM misses are left out: gpu_gather.py reads the same misses at every
    repetition, and a few thousand regions' translations then stay cached from one to the next (26-36
    us for 233 and 2,466 misses, where call 30b's fresh sets of as many regions took 59-101 us). The
    engine's are cold: between two steps of a layer, the other 31 layers touch some 30,000 regions each."""
    out = []
    heads, per_head = 32 * 8, 983  # gpu_gather.py: 32 requests x 8 KV heads x 983 selected of 32,480 cold
    for slots in ("contiguous", "random"):
        data = json.loads((HERE / f"gather-{slots}-slots-call30a.json").read_text())["rows"]
        for r in data:
            if r.get("misses", heads * per_head - r.get("hits", 0)) < WARM:
                continue
            if r["kind"] == "gather_uva of the misses alone":
                m = r["misses"]
                out.append((f"gather_uva, misses alone ({slots} slots)", f"{m}", m,
                            regions_touched(m / heads, 32480, heads), r["time_us"]))
            elif r["kind"] == "gather_inplace" and (r["tile"], r["warps"]) == (32, 4) and r["hit_rate"] < 1:
                m = heads * per_head - r["hits"]
                out.append((f"gather_inplace, 32 x 4 ({slots} slots)", f"{m}", m,
                            regions_touched(m / heads, 32480, heads), r["time_us"]))
    engine = [  # (profile, kernel, hit rate from its JSON)
        (RESULTS / "gpu/session27/profile-128k-miss055-call27h", "_inplace_fill", "27h in place"),
        (RESULTS / "gpu/session29/profile-128k-jitter-x4-call29e", "_lru_fill", "29e LRU x4"),
        (PROFILE_99, "_inplace_fill", "30g in place"),
    ]
    for stem, kernel, name in engine:
        r = json.loads(Path(f"{stem}.json").read_text())["results"][0]
        hit = r["fetch"]["cache_hit_rate"]
        cold = sum(r["cold_tokens_per_request"]) / len(r["cold_tokens_per_request"])
        sel = math.ceil(0.03 * cold)
        miss = (1 - hit) * sel
        out.append(("engine fill at 128K, 8 requests x 8 KV heads", f"{name} ({hit:.0%} hits)", 64 * miss,
                    regions_touched(miss, cold, 64), fill_us(f"{stem}-gpu.txt", kernel)))
    return out


def main():
    probe = json.loads((HERE / "region-probe-call30b.json").read_text())
    pinned = [r for r in probe["law"] if r["memory"] == "pinned"]
    x, err = fit(pinned)
    print(f"{probe['device']}: t = {x[0]:.0f} us + max(rows x 256 B / {x[1]:.1f} GB/s, distinct 64 KiB regions x "
          f"{x[2]:.1f} ns); fitted to the {len(pinned)} pinned read sets of call 30b: rms error "
          f"{np.sqrt(np.mean(err ** 2)):.0%}, largest {np.abs(err).max():.0%}")
    rows = checks(x)
    print(f"\n{'what':52}{'':>22}{'rows':>9}{'regions':>9}{'measured':>10}{'model':>8}{'model/meas':>11}  bound by")
    for group, label, n, g, us in rows:
        pred = float(model(x, np.array(n, float), np.array(g, float)))
        bound = "bytes" if n * ROW / (x[1] * 1e3) > g * x[2] / 1e3 else "translations"
        print(f"{group:52}{label:>22}{n:>9.0f}{g:>9.0f}{us:>10.1f}{pred:>8.1f}{pred / us:>11.2f}  {bound}")

    # the step but its fills, at 99% hits (call 30g, the synthetic ranking's 1.5 ms included), and stock
    # (call 30f, the same machine); the measured ratios at 128K and 3% from docs/results/throughput.json, from
    # session 27 on (its synthetic ranking is the one of call 30g)
    p99 = json.loads(Path(f"{PROFILE_99}.json").read_text())["results"][0]
    rest_ms = p99["step_ms"] - 32 * fill_us(f"{PROFILE_99}-gpu.txt", "_inplace_fill") / 1e3
    runs = json.loads((RESULTS / "throughput.json").read_text())["runs"]
    stock = next(r["decode_tok_s"] for r in runs[-1]["results"] if r["config"] == "stock")
    measured = [(r["fetch"]["cache_hit_rate"], r["speedup_vs_stock"], run["session"]) for run in runs
                if run.get("session", 0) >= 27 for r in run["results"]
                if r.get("context") == 130000 and r["config"] != "stock" and (r.get("fetch") or {}).get("cache_hit_rate")
                and r.get("budget") == 0.03]

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(19, 5))
    markers = iter("osD^vP*X")
    for memory in ("pinned", "hugepages"):
        pts = [r for r in probe["law"] if r["memory"] == memory]
        pred = model(x, np.array([r["rows"] for r in pts], float), np.array([r["regions_64k"] for r in pts], float))
        ax1.scatter([r["us"] for r in pts], pred, marker=next(markers), label=f"call 30b probe, {memory}", s=22)
    groups = {}
    for group, _, n, g, us in rows:
        groups.setdefault(group, []).append((us, float(model(x, np.array(n, float), np.array(g, float)))))
    for group, pts in groups.items():
        ax1.scatter(*zip(*pts), marker=next(markers), label=group, s=30)
    lim = [40, 4000]
    ax1.plot(lim, lim, color="gray", lw=0.8)
    ax1.fill_between(lim, [v * 0.8 for v in lim], [v * 1.2 for v in lim], color="gray", alpha=0.12, label="within 20%")
    ax1.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="measured us", ylabel="model us")
    ax1.set_title(f"t = {x[0]:.0f} us + max(rows x 256 B / {x[1]:.0f} GB/s, 64 KiB regions x {x[2]:.0f} ns)",
                  fontsize=9)
    ax1.legend(fontsize=6.5, loc="upper left")

    # the engine's shape at 128K: 8 requests x 8 KV heads, 3% of 129,750 cold tokens selected per head
    cold, heads = 129750, 64
    sel = math.ceil(0.03 * cold)
    hit = np.linspace(0.3, 1.0, 141)
    miss = (1 - hit) * sel
    n = heads * miss
    g = np.array([regions_touched(m, cold, heads) for m in miss])
    ax2.plot(hit, n * ROW / (x[1] * 1e3) + x[0], ls="--", label="bytes alone")
    ax2.plot(hit, g * x[2] / 1e3 + x[0], ls=":", label="translations alone")
    ax2.plot(hit, model(x, n, g), color="k", label="model")
    for group, label, n_, g_, us in rows:
        if group.startswith("engine"):
            h = 1 - n_ / heads / sel
            ax2.scatter([h], [us], zorder=3)
            ax2.annotate(label, (h, us), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax2.set(xlabel="device-cache hit rate (misses drawn at random)", ylabel="fill per layer, us", ylim=(0, 900))
    ax2.set_title("128K context, 8 requests, 3%: one layer's misses (fp8 pool)", fontsize=9)
    ax2.legend(fontsize=8)
    cold_pts = np.linspace(0.3, 1.0, 141)
    ratio = [8e3 / (rest_ms + 32 * float(model(x, np.array(64 * (1 - h) * sel), np.array(regions_touched(
        (1 - h) * sel, cold, 64)))) / 1e3) / stock for h in cold_pts]
    ax3.plot(cold_pts, ratio, color="k", label=f"model: the step but its fills (call 30g, {rest_ms:.1f} ms)\n+ 32 modelled fills")
    ax3.scatter([m[0] for m in measured], [m[1] for m in measured], color="tab:red", zorder=3, label="measured")
    for h, r, session in measured:
        ax3.annotate(f"s{session}", (h, r), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax3.axhline(3.0, color="tab:red", lw=0.8, ls="--", label="3x target")
    ax3.set(xlabel="device-cache hit rate (misses drawn at random)", ylabel="decode tok/s, offload / stock",
            ylim=(0, 3.5))
    ax3.set_title(f"128K, 8 requests, 3%: against stock's {stock:.0f} tok/s (call 30f)", fontsize=9)
    ax3.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{probe['device']}: zero-copy reads of pinned host memory cost bytes or address translations, "
                 "whichever is larger (session 30)", fontsize=10)
    fig.tight_layout()
    out = RESULTS / "miss-cost-model.png"
    fig.savefig(out, dpi=120)
    print(f"\n{out}")
    print(f"\n128K, 8 requests, 3%, misses at random: the step but its fills ({rest_ms:.1f} ms at 99% hits, call "
          f"30g) plus 32 modelled fills, against stock's {stock:.1f} tok/s (call 30f)")
    for h in (0.45, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0):
        m = (1 - h) * sel
        g_ = regions_touched(m, cold, heads)
        fill = float(model(x, np.array(heads * m), np.array(g_)))
        step = rest_ms + 32 * fill / 1e3
        print(f"hits {h:.0%}: {heads * m:7.0f} misses touch {g_ / (heads * math.ceil(cold / REGION_TOKENS)):4.0%} of the "
              f"layer's regions: fill {fill:4.0f} us per layer, step {step:5.1f} ms, {8e3 / step / stock:.2f}x stock")
    print("measured at 128K (hits, ratio, session): " + ", ".join(f"({h:.1%}, {r:.2f}x, s{s_})" for h, r, s_ in measured))
    # not built: a 4-bit pool, each token's K and V in 64 bytes each plus a 2-byte scale each (136 bytes),
    # so a (request, KV head)'s rows span 136/256 of the regions and each miss reads 136 bytes
    row4 = 136
    print(f"\nthe same with a 4-bit pool ({row4} bytes per token and KV head: fewer bytes and regions; not built)")
    for h in (0.45, 0.7, 0.9, 0.95, 0.99):
        m = (1 - h) * sel
        g_ = regions_touched(m, cold * row4 / ROW, heads)
        fill = float(x[0] + max(heads * m * row4 / (x[1] * 1e3), g_ * x[2] / 1e3))
        step = rest_ms + 32 * fill / 1e3
        print(f"hits {h:.0%}: fill {fill:4.0f} us per layer, step {step:5.1f} ms, {8e3 / step / stock:.2f}x stock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
