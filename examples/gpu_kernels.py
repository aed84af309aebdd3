#!/usr/bin/env python
"""GPU check of the Triton kernels in csrc_triton/: correctness against the torch
references (a sweep of small odd shapes, then one realistic decode step), then
micro-benchmarks, and a table printed last. Needs torch + triton and a CUDA GPU,
not vLLM; run from a checkout:

    python examples/gpu_kernels.py            # OUT=dir also writes $OUT/kernels.json

Realistic step (defaults): B=32 requests, Hq=32, Hkv=8, D=128, 32K context, block 16,
sink 32 + window 256 resident (+ the new token), budget 3% of the context selected
per KV head from the cold range; one layer. Pipeline timed kernel by kernel:
score (bf16 and fp8 keys) -> top-k -> gather (UVA kernel / copy engine) -> attention.
Times: CUDA events, median of --reps runs, L2 flushed before each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HBM_PEAK = 3.0e12  # H100 SXM, bytes/s
PCIE_PEAK = 54.8e9  # host reads over PCIe 5 x16, bytes/s


def rel_err(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


class Checks:
    def __init__(self):
        self.rows, self.failed = [], 0

    def add(self, name, ok, detail=""):
        self.rows.append({"check": name, "ok": bool(ok), "detail": detail})
        self.failed += not ok
        print(f"  [{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)


def _warm_up(*fns):
    t0 = time.perf_counter()  # for 50 ms: clocks ramp after the CPU-bound checks
    while time.perf_counter() - t0 < 0.05:
        for fn in fns:
            fn()
        torch.cuda.synchronize()


COVER_CYCLES = 1_000_000  # about 0.5 ms of GPU clock: longer than any launcher's Python


def _timed_once(fn, flush, cover: bool = True) -> float:
    """Seconds of one call, by CUDA events, the L2 flushed first. A GPU spin is queued before
    the start event, so the device is still busy while the host runs ``fn``'s launcher: the
    events then time the kernels alone, not the Python between them (without it a small
    ``flush`` left the GPU idle for the launch: topk_probe's one-element flush read 94 us
    for a top-k of 22 us, call 22e, docs/results/gpu/topk-session22e/). ``cover=False``: no spin,
    as before session 22 (for that comparison)."""
    flush.zero_()
    if cover:
        torch.cuda._sleep(COVER_CYCLES)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) * 1e-3


def timeit(fn, reps, flush):
    """Median seconds of ``reps`` calls, each timed alone with the L2 flushed, after a warm-up."""
    _warm_up(fn)
    ts = sorted(_timed_once(fn, flush) for _ in range(reps))
    return ts[len(ts) // 2]


def timeit_pair(fn_a, fn_b, reps, flush):
    """(median seconds of fn_a, of fn_b), timed as ``timeit`` does but alternately, a then b,
    then b then a, so that both see the same clocks and neighbours: for A/B of two trees'
    kernels in one process, where separate runs differ by up to 40% on a shared device."""
    _warm_up(fn_a, fn_b)
    ts = ([], [])
    for r in range(reps):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            ts[which].append(_timed_once((fn_a, fn_b)[which], flush))
    return tuple(sorted(t)[len(t) // 2] for t in ts)


def sweep_setup(script: str, cpu_test: str):
    """The GPU sweeps' common start: exit with a hint on a machine without CUDA, else
    (a seeded CUDA generator, a 256 MiB buffer that timeit zeroes to flush the L2)."""
    if not torch.cuda.is_available():
        sys.exit(f"examples/{script} needs a CUDA GPU; on CPU run TRITON_INTERPRET=1 python -m pytest {cpu_test}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    return gen, torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")


def save_rows(name: str, rows: list[dict]) -> None:
    """A GPU sweep's rows, with the device, to $OUT/name when OUT is set."""
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / name
        path.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))
        print(f"wrote {path}")


# ----------------------------------------------------------------------------- small sweep
def sweep(K_, ck, dev):
    from vllm_kvoffload.ops.gather_ref import gather_ref
    from vllm_kvoffload.ops.quantize_ref import dequantize_fp8_ref, quantize_fp8_ref
    from vllm_kvoffload.ops.score_ref import score_mass_ref
    from vllm_kvoffload.ops.sparse_decode_ref import sparse_decode_ref
    from vllm_kvoffload.ops.topk_ref import topk_ref

    bf = torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(int(time.time()))
    rn = lambda *s: torch.randn(*s, device=dev, generator=g)  # noqa: E731
    ri = lambda lo, hi, s: torch.randint(lo, hi, s, device=dev, generator=g, dtype=torch.int32)  # noqa: E731
    for G in (1, 2, 3, 4, 8):
        for D in (64, 128):
            for bs in (16, 32):
                B, Hkv, max_res, K = 3, 2 if G > 2 else 4, 301, 133
                Hq = G * Hkv
                nb = -(-max_res // bs)
                kv = rn(2, B * nb + 2, bs, Hkv, D).to(bf)
                bt = torch.randperm(B * nb + 2, device=dev)[: B * nb].view(B, nb).int()
                rl = ri(1, max_res + 1, (B,))
                q = rn(B, Hq, D).to(bf)
                sk, sv = rn(B, Hkv, K, D).to(bf), rn(B, Hkv, K, D).to(bf)
                sl = ri(0, K + 1, (B, Hkv))
                valid = torch.rand(B, Hkv, K, device=dev, generator=g) < 0.7
                for chunk in (None, 64):
                    for vm in (None, valid):
                        out = torch.full_like(q, float("nan"))
                        K_["sparse_decode"].sparse_decode(q, kv, bt, rl, sk, sv, sl, D**-0.5, sel_valid=vm, out=out, chunk=chunk)
                        ref = sparse_decode_ref(q, kv, bt, rl, sk, sv, sl, D**-0.5, sel_valid=vm)
                        e = rel_err(out, ref)
                        ck.add(f"sparse_decode G={G} D={D} bs={bs} chunk={chunk} valid={vm is not None}",
                               e <= 1e-2 and not out.isnan().any(), f"rel={e:.2e}")
                # scoring, bf16 and fp8 (quantized by the kernel)
                n_cold = 517
                ncb = -(-n_cold // bs)
                keys = (rn(B * ncb + 1, Hkv, bs, D) * 2).to(bf)
                slots = torch.randperm(B * ncb + 1, device=dev)[: B * ncb].view(B, ncb).int()
                cl = ri(0, n_cold + 1, (B,))
                cl[0] = n_cold
                for fp8 in (False, True):
                    kk, ks = (K_["quantize"].quantize_fp8(keys) if fp8 else (keys, None))
                    mass = torch.full((B, Hkv, ncb * bs), float("nan"), device=dev)
                    K_["score"].score_mass(q, kk, ks, slots, cl, D**-0.5, out=mass)
                    ref = score_mass_ref(q, kk, ks, slots, cl, D**-0.5)
                    fin = torch.isfinite(ref)
                    ok = torch.equal(fin, torch.isfinite(mass)) and not mass.isnan().any()
                    e = rel_err(mass[fin], ref[fin])
                    ck.add(f"score {'fp8' if fp8 else 'bf16'} G={G} D={D} bs={bs}", ok and e <= 1e-2, f"rel={e:.2e}")
    # quantize vs reference
    for shape in ((1000, 128), (77, 8, 16, 64)):
        x = (rn(*shape) * 5).to(bf)
        q8, s = K_["quantize"].quantize_fp8(x)
        qr, sr = quantize_fp8_ref(x)
        mis = (q8.view(torch.uint8) != qr.view(torch.uint8)).float().mean().item()
        e = rel_err(dequantize_fp8_ref(q8, s), dequantize_fp8_ref(qr, sr))
        back = K_["quantize"].dequantize_fp8(q8, s)
        ck.add(f"quantize_fp8 {shape}", mis < 1e-3 and e <= 1e-2 and torch.equal(back, dequantize_fp8_ref(q8, s)),
               f"code mismatch={mis:.1e} rel={e:.2e}")
    # top-k, ties and k > n included
    for B, Hkv, n, k, ties in ((3, 2, 1000, 37, False), (2, 4, 5003, 300, True), (2, 2, 100, 128, False)):
        lens = ri(0, n + 1, (B,))
        lens[0] = n
        mass = torch.softmax(rn(B, Hkv, n) * 4, -1)
        if ties:
            mass = (mass * 4096).round() / 4096
        mass = torch.where(torch.arange(n, device=dev) < lens[:, None, None], mass, float("-inf"))
        for name, fn in TOPK_FNS.items():
            ck.add(f"{name} B={B} Hkv={Hkv} n={n} k={k} ties={ties}", check_topk(K_, mass, lens, k, topk_ref, fn))
    # gather, both paths
    for B, Hkv, bs, D, n, K in ((3, 2, 16, 128, 301, 45), (2, 4, 32, 64, 77, 100)):
        ncb = -(-n // bs)
        host = torch.randn(B * ncb + 1, 2, 2, Hkv, bs, D).to(bf).pin_memory()
        slots = torch.randperm(B * ncb + 1)[: B * ncb].view(B, ncb).int()
        idx = torch.sort(torch.randint(0, n, (B, Hkv, K), device=dev), -1).values.int()
        cnt = ri(0, K + 1, (B, Hkv))
        rk, rv = gather_ref(host, 1, slots, idx, cnt)
        for mode in ("tensor", "int"):
            ok_ = torch.full((B, Hkv, K, D), float("nan"), device=dev).to(bf)
            ov_ = torch.full_like(ok_, float("nan"))
            K_["gather"].gather_uva(host, 1, slots.to(dev), idx, cnt, out_k=ok_, out_v=ov_, mode=mode)
            ck.add(f"gather_uva[{mode}] B={B} Hkv={Hkv} bs={bs} D={D}", torch.equal(ok_, rk) and torch.equal(ov_, rv))
        ok_, ov_, st = K_["gather"].gather_copy_engine(host, 1, slots, idx, cnt)
        torch.cuda.current_stream().wait_stream(st)
        valid = (torch.arange(K, device=dev)[None, None, :] < cnt[:, :, None])[..., None]
        ck.add(f"gather_copy_engine B={B} Hkv={Hkv}", torch.equal(torch.where(valid, ok_, 0), rk)
               and torch.equal(torch.where(valid, ov_, 0), rv))


TOPK_FNS = {"topk": "topk_select"}


def check_topk(K_, mass, lens, k, topk_ref, fn="topk_select"):
    B, Hkv, _ = mass.shape
    idx = torch.full((B, Hkv, k), -7, dtype=torch.int32, device=mass.device)
    cnt = torch.full((B, Hkv), -7, dtype=torch.int32, device=mass.device)
    getattr(K_["topk"], fn)(mass, lens, k, idx=idx, counts=cnt)
    ridx, rcnt = topk_ref(mass, lens, k)
    if not torch.equal(cnt, rcnt):
        return False
    ar = torch.arange(k, device=mass.device)
    valid = ar[None, None, :] < cnt[:, :, None]
    if not (idx[~valid] == 0).all():
        return False
    asc = (idx.diff(dim=-1) > 0) | ~valid[..., 1:]
    inb = (idx >= 0) & (idx < lens[:, None, None])
    if not (asc.all() and (inb | ~valid).all()):
        return False
    big = float("inf")
    got = torch.where(valid, mass.gather(-1, idx.long().clamp_min(0)), big).sort(-1).values
    ref = torch.where(valid, mass.gather(-1, ridx.long()), big).sort(-1).values
    return torch.equal(got, ref)


# ----------------------------------------------------------------------------- realistic step
def realistic(K_, ck, dev, a, flush):
    from vllm_kvoffload.ops.gather_ref import gather_ref
    from vllm_kvoffload.ops.score_ref import score_mass_ref
    from vllm_kvoffload.ops.sparse_decode_ref import sparse_decode_ref
    from vllm_kvoffload.ops.topk_ref import topk_ref

    bf = torch.bfloat16
    B, Hq, Hkv, D, bs = a.batch, a.hq, a.hkv, a.head_dim, a.block_size
    scale = D**-0.5
    sink_blocks = a.sink // bs
    ctx = [a.context - 7 * b for b in range(B)]  # not multiples of the tiles
    res_blocks, cold_blocks, res_lens, cold_lens = [], [], [], []
    for c in ctx:
        nb = -(-c // bs)
        wb = max(sink_blocks, (c - a.window - 1) // bs)  # first block of the window (+ new token)
        res_blocks.append(list(range(sink_blocks)) + list(range(wb, nb)))
        cold_blocks.append(list(range(sink_blocks, wb)))
        res_lens.append(a.sink + c - wb * bs)
        cold_lens.append((wb - sink_blocks) * bs)
    K = max(1, round(a.budget * a.context))
    mrb, mcb = max(map(len, res_blocks)), max(map(len, cold_blocks))
    n_dev_blocks = sum(map(len, res_blocks)) + 1
    perm = torch.randperm(n_dev_blocks)
    bt = torch.zeros(B, mrb, dtype=torch.int32)
    o = 0
    for b, rb in enumerate(res_blocks):
        bt[b, : len(rb)] = perm[o:o + len(rb)].int()
        o += len(rb)
    S = sum(map(len, cold_blocks)) + 1  # host slots (and compact-key rows)
    sperm = torch.randperm(S)
    cold_slots = torch.zeros(B, mcb, dtype=torch.int32)
    o = 0
    for b, cb in enumerate(cold_blocks):
        cold_slots[b, : len(cb)] = sperm[o:o + len(cb)].int()
        o += len(cb)
    bt, cs = bt.to(dev), cold_slots.to(dev)
    rl = torch.tensor(res_lens, dtype=torch.int32, device=dev)
    cl = torch.tensor(cold_lens, dtype=torch.int32, device=dev)
    print(f"  B={B} Hq={Hq} Hkv={Hkv} D={D} bs={bs} ctx~{a.context} resident~{max(res_lens)} "
          f"cold~{max(cold_lens)} K={K} host slots={S} ({S * Hkv * bs * D * 2 * 2 / 2**30:.2f} GiB pinned)", flush=True)

    t0 = time.time()
    kv_cache = torch.randn(2, n_dev_blocks, bs, Hkv, D, device=dev).to(bf)
    q = torch.randn(B, Hq, D, device=dev).to(bf)
    keys = torch.empty(S, Hkv, bs, D, device=dev, dtype=bf)  # compact keys (= host keys)
    host = torch.empty(S, 1, 2, Hkv, bs, D, dtype=bf, pin_memory=True)
    step = 4096
    for s0 in range(0, S, step):
        kx = (torch.randn(min(step, S - s0), Hkv, bs, D, device=dev) * 1.5).to(bf)
        keys[s0:s0 + step] = kx
        host[s0:s0 + step, 0, 0].copy_(kx)
        host[s0:s0 + step, 0, 1].copy_(torch.randn_like(kx, dtype=torch.float32).to(bf))
    torch.cuda.synchronize()
    print(f"  setup {time.time() - t0:.1f}s", flush=True)

    res = {}
    # --- quantize (compact keys -> fp8)
    keys8, kscale = K_["quantize"].quantize_fp8(keys)
    # --- scoring
    mass = K_["score"].score_mass(q, keys, None, cs, cl, scale)
    mass8 = K_["score"].score_mass(q, keys8, kscale, cs, cl, scale)
    ref = score_mass_ref(q, keys, None, cs, cl, scale)
    ref8 = score_mass_ref(q, keys8, kscale, cs, cl, scale)
    fin = torch.isfinite(ref)
    for nm, m, r in (("bf16", mass, ref), ("fp8", mass8, ref8)):
        e = rel_err(m[fin], r[fin])
        ck.add(f"realistic score {nm}", e <= 1e-2 and torch.equal(torch.isfinite(m), fin) and not m.isnan().any(),
               f"rel={e:.2e}")
    # fp8 scoring vs the bf16 truth: how many of the exact top-k it keeps
    del ref, ref8
    # --- top-k
    ck.add("realistic topk", check_topk(K_, mass, cl, K, topk_ref))
    idx, cnt = K_["topk"].topk_select(mass, cl, K)
    idx8, _ = K_["topk"].topk_select(mass8, cl, K)
    recall = recall_at_k(idx, idx8, cnt)
    print(f"  fp8 scoring keeps {recall:.3f} of the bf16 top-{K}", flush=True)
    # --- gather
    sk, sv = K_["gather"].gather_uva(host, 0, cs, idx, cnt)
    rk, rv = gather_ref(host, 0, cold_slots, idx, cnt)
    ck.add("realistic gather_uva", torch.equal(sk, rk) and torch.equal(sv, rv))
    ck_, cv_, st = K_["gather"].gather_copy_engine(host, 0, cold_slots, idx, cnt)
    torch.cuda.current_stream().wait_stream(st)
    valid = (torch.arange(K, device=dev)[None, None, :] < cnt[:, :, None])[..., None]  # rows past cnt unspecified
    ck.add("realistic gather_copy_engine", torch.equal(torch.where(valid, ck_, 0), rk)
           and torch.equal(torch.where(valid, cv_, 0), rv))
    del rk, rv, ck_, cv_
    # --- attention
    out = torch.full_like(q, float("nan"))
    K_["sparse_decode"].sparse_decode(q, kv_cache, bt, rl, sk, sv, cnt, scale, out=out)
    ref = sparse_decode_ref(q, kv_cache, bt, rl, sk, sv, cnt, scale)
    e = rel_err(out, ref)
    ck.add("realistic sparse_decode", e <= 1e-2 and not out.isnan().any(), f"rel={e:.2e}")

    # ------------------------------------------------------------------ timings
    reps = a.reps
    n_cold = int(cl.sum())
    sel_rows = int(cnt.sum())
    T = lambda fn: timeit(fn, reps, flush)  # noqa: E731
    sd = K_["sparse_decode"]
    t_att = T(lambda: sd.sparse_decode(q, kv_cache, bt, rl, sk, sv, cnt, scale, out=out))
    b_att = sd.bytes_touched(q, kv_cache, rl, sk, cnt)
    res["sparse_decode"] = dict(time_s=t_att, bytes=b_att, peak=HBM_PEAK,
                                chunk=sd.plan(B, Hkv, mrb * bs, K, q.device, 64))
    t_s = T(lambda: K_["score"].score_mass(q, keys, None, cs, cl, scale, out=mass))
    res["score_bf16"] = dict(time_s=t_s, bytes=K_["score"].bytes_touched(q, keys, None, cl), peak=HBM_PEAK)
    t_s8 = T(lambda: K_["score"].score_mass(q, keys8, kscale, cs, cl, scale, out=mass8))
    res["score_fp8"] = dict(time_s=t_s8, bytes=K_["score"].bytes_touched(q, keys8, kscale, cl), peak=HBM_PEAK)
    t_s8b = T(lambda: K_["score"].score_mass(q, keys8, kscale, cs, cl, scale, out=mass8, fp8_widen="bf16"))
    res["score_fp8 (widened to bf16)"] = dict(time_s=t_s8b, bytes=res["score_fp8"]["bytes"], peak=HBM_PEAK)
    # exact-topk-fp8's engine layout: keys and scales packed in one uint8 summary per (slot, head)
    S_, H_, bs_, D_ = keys8.shape
    packed = torch.empty(S_, H_, bs_ * (D_ + 4), dtype=torch.uint8, device=dev)
    packed[..., : bs_ * D_] = keys8.view(torch.uint8).flatten(2)
    packed[..., bs_ * D_:] = kscale.view(torch.uint8).flatten(2)
    pk = packed[..., : bs_ * D_].view(keys8.dtype).unflatten(-1, (bs_, D_))
    ps_ = packed[..., bs_ * D_:].view(torch.float32)
    ck.add("realistic score fp8 packed layout", torch.equal(
        K_["score"].score_mass(q, pk, ps_, cs, cl, scale), K_["score"].score_mass(q, keys8, kscale, cs, cl, scale)))
    t_s8p = T(lambda: K_["score"].score_mass(q, pk, ps_, cs, cl, scale, out=mass8))
    res["score_fp8 (packed summary layout)"] = dict(time_s=t_s8p, bytes=res["score_fp8"]["bytes"], peak=HBM_PEAK)
    del packed, pk, ps_
    t_q = T(lambda: K_["quantize"].quantize_fp8(keys, out=keys8, scale=kscale))
    res["quantize_fp8"] = dict(time_s=t_q, bytes=keys.numel() * 3 + kscale.numel() * 4, peak=HBM_PEAK)
    t_k = T(lambda: K_["topk"].topk_select(mass, cl, K, idx=idx, counts=cnt))
    res["topk"] = dict(time_s=t_k, bytes=n_cold * Hkv * 4 + idx.numel() * 4, peak=HBM_PEAK,
                       note="unique bytes; the row is re-read 10x from L2")
    t_torch_topk = T(lambda: torch.topk(mass, K, dim=-1))
    res["torch.topk (no compaction/sort)"] = dict(time_s=t_torch_topk, bytes=mass.numel() * 4 + idx.numel() * 12,
                                                  peak=HBM_PEAK)
    g_bytes = sel_rows * D * 2 * 2
    t_g = T(lambda: K_["gather"].gather_uva(host, 0, cs, idx, cnt, out_k=sk, out_v=sv))
    res["gather_uva"] = dict(time_s=t_g, bytes=g_bytes, peak=PCIE_PEAK)
    t_gi = T(lambda: K_["gather"].gather_uva(host, 0, cs, idx, cnt, out_k=sk, out_v=sv, mode="int"))
    res["gather_uva[int ptr]"] = dict(time_s=t_gi, bytes=g_bytes, peak=PCIE_PEAK)
    staging = torch.empty(2, B, Hkv, K, D, dtype=bf, pin_memory=True)
    stream = torch.cuda.Stream()

    def ce():
        K_["gather"].gather_copy_engine(host, 0, cold_slots, idx, cnt, out_k=sk, out_v=sv, staging=staging,
                                        stream=stream)
        torch.cuda.current_stream().wait_stream(stream)

    for _ in range(2):
        ce()
    torch.cuda.synchronize()
    walls = []
    for _ in range(max(3, reps // 4)):
        t0 = time.perf_counter()
        ce()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    walls.sort()
    res["gather_copy_engine (wall: D2H idx + CPU gather + H2D)"] = dict(time_s=walls[len(walls) // 2], bytes=g_bytes,
                                                                        peak=PCIE_PEAK)
    t_h2d = T(lambda: (sk.copy_(staging[0], non_blocking=True), sv.copy_(staging[1], non_blocking=True)))
    res["H2D copy only (pinned staging)"] = dict(time_s=t_h2d, bytes=g_bytes, peak=PCIE_PEAK)
    for r in res.values():
        r["GB_s"] = r["bytes"] / r["time_s"] / 1e9
        r["frac_peak"] = r["bytes"] / r["time_s"] / r["peak"]
    summary = dict(
        attention_s=t_att, score_topk_bf16_s=t_s + t_k, score_topk_fp8_s=t_s8 + t_k,
        score_topk_bf16_over_attention=(t_s + t_k) / t_att, score_topk_fp8_over_attention=(t_s8 + t_k) / t_att,
        gather_uva_over_attention=t_g / t_att, fp8_topk_recall=recall, K=K, sel_rows=sel_rows, cold_tokens=n_cold,
    )
    return res, summary


def recall_at_k(idx, idx2, cnt):
    hit = tot = 0
    for b in range(idx.shape[0]):
        for h in range(idx.shape[1]):
            c = int(cnt[b, h])
            a, e = idx[b, h, :c], idx2[b, h, :c]
            hit += torch.isin(a, e).sum().item()
            tot += c
    return hit / max(tot, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hq", type=int, default=32)
    p.add_argument("--hkv", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--budget", type=float, default=0.03)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--sink", type=int, default=32)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--skip-sweep", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("examples/gpu_kernels.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "on CPU run TRITON_INTERPRET=1 python -m pytest tests/csrc_triton -q instead.")
        sys.exit(2)
    import triton

    from vllm_kvoffload.ops.triton_kernels import load

    dev = torch.device("cuda")
    K_ = {n: load(n) for n in ("sparse_decode", "score", "quantize", "topk", "gather")}
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    t0 = time.time()
    ck = Checks()
    if not a.skip_sweep:
        print("small-shape sweep:", flush=True)
        sweep(K_, ck, dev)
        print(f"  ({time.time() - t0:.0f}s)", flush=True)
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=dev)
    print("realistic decode step:", flush=True)
    res, summary = realistic(K_, ck, dev, a, flush)

    print(f"\nchecks: {len(ck.rows) - ck.failed}/{len(ck.rows)} passed; total {time.time() - t0:.0f}s\n")
    print(f"{'kernel':<56}{'time us':>10}{'MB':>10}{'GB/s':>10}{'% peak':>8}  peak")
    for name, r in res.items():
        pk = "HBM 3.0TB/s" if r["peak"] == HBM_PEAK else "PCIe 54.8GB/s"
        print(f"{name:<56}{r['time_s'] * 1e6:>10.1f}{r['bytes'] / 1e6:>10.1f}{r['GB_s']:>10.1f}"
              f"{100 * r['frac_peak']:>7.1f}%  {pk}")
    att = res["sparse_decode"]
    print(f"\nsparse attention: {100 * att['frac_peak']:.1f}% of HBM peak on its bytes (target >= 70%)")
    print(f"score+topk vs attention: bf16 keys {summary['score_topk_bf16_over_attention']:.2f}x, "
          f"fp8 keys {summary['score_topk_fp8_over_attention']:.2f}x; gather (UVA) "
          f"{summary['gather_uva_over_attention']:.2f}x; fp8 top-k recall {summary['fp8_topk_recall']:.3f}")
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "kernels.json"
        path.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                        triton=triton.__version__, args=vars(a), checks=ck.rows,
                                        kernels=res, summary=summary), indent=1))
        print(f"wrote {path}")
    sys.exit(1 if ck.failed else 0)


if __name__ == "__main__":
    main()
