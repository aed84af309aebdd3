"""How often would a device cache hit on the trained model? Replays exact-topk's selections of
held-out samples at 8K (teacher-forced answers, torch on CPU) through cache policies, per layer and
KV head, and prints the hit rate, the rows read from the host per step, and how many distinct blocks and
64 KiB regions the misses fall in (sparse misses cost about one address translation per 64 KiB region
touched: session 30), against misses drawn at random.

Selection, as the engine makes it: sinks (16 tokens) and the last `window` tokens stay dense; of the
other (cold) tokens, the top ceil(budget x length) per KV head by softmax mass summed over the GQA
group. Masses come from the full-attention forward (the engine's come from its sparse forward, which
differs slightly).

Policies, each per (layer, KV head), capacity counted in tokens:
  last     the cache holds last step's selection (the engine's in-place cache since session 24);
  lru-M    M x the budget, least recently selected evicted (M = 1 is `last` with leftovers kept);
  ahead-D  `last` plus, for each selected token, the D tokens after it, read as well (prefetch:
           counted as host rows read, and as hits when selected next step).
  runners-M  `last` plus this step's runners-up, the tokens ranked just below the selection, up to
           M x the budget in all, read ahead for the next step where not already held (counted as
           host rows read; they could be read off the critical path, during the rest of the step).
Usage: python docs/results/cache/cache_sim.py [MODEL] [--samples N] [--budget 0.03] [--out F.json]"""
import argparse, json, math, sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

from vllm_kvoffload.bench import needle, text2json
from vllm_kvoffload.evaluation.exact_mass import gqa_cold_mass
from vllm_kvoffload.training import data
from vllm_kvoffload.training import model as M

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?", default="vllm_kvoffload/models/kvoffload-tiny")
ap.add_argument("--samples", type=int, default=4)
ap.add_argument("--context", type=int, default=8192)
ap.add_argument("--budget", type=float, default=0.03)
ap.add_argument("--sink", type=int, default=16)
ap.add_argument("--window", type=int, default=256)
ap.add_argument("--tasks", nargs="+", default=["text2json", "needle"])
ap.add_argument("--out", default=None)
args = ap.parse_args()
torch.set_num_threads(2)

RUNNERS = 4  # the replay keeps the top RUNNERS x budget tokens of every step (runners-M, M <= RUNNERS)
SELECTIONS = []  # per layer: [Hkv, steps] lists of token-index sets, filled by the forward below


def forward(self, x, cos, sin, cache=None):
    B, T, _ = x.shape
    c = self.cfg
    rep = c.heads // c.kv_heads
    q, k, v = self.rotated_qkv(x, cos, sin)
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True)
    a0 = self.answer_from
    t = torch.arange(a0, T).unsqueeze(1)
    j = torch.arange(T).unsqueeze(0)
    cold = (j <= t) & (j >= args.sink) & (j <= t - args.window)
    mass = gqa_cold_mass(q[0, :, a0:], kk[0], cold, c.kv_heads)  # [Hkv, Ta, T]
    kmax = math.ceil(args.budget * T)
    top = mass.topk(RUNNERS * kmax, -1).indices  # [Hkv, Ta, RUNNERS x kmax], by mass
    sel = []
    for h in range(c.kv_heads):
        steps = []
        for s in range(T - a0):
            k = math.ceil(args.budget * (a0 + s + 1))
            cold_len = a0 + s - args.window - args.sink + 1  # cold tokens [sink, t - window]
            steps.append((set(top[h, s, :k].tolist()), top[h, s, k:RUNNERS * k].tolist(), cold_len))
        sel.append(steps)  # per step: (the selection, the runners-up in order of mass, the cold tokens)
    SELECTIONS.append(sel)
    return self.o_proj(out.transpose(1, 2).reshape(B, T, c.heads * c.head_dim))


M.Attention.forward = forward


def load(path):
    from safetensors.torch import load_file
    m = M.LlamaLM(M.ModelConfig())
    m.load_state_dict({k: v.float() for k, v in load_file(path + "/model.safetensors").items()})
    return m.eval()


BLOCK = 16  # tokens per block; in an fp8 pool of head size 128 a block's K and V fill one 4 KiB page
REGION = 256  # tokens per 64 KiB of a (request, KV head)'s rows in that pool (contiguous slots): on the
# H100 a zero-copy read costs about one address translation per distinct 64 KiB region (session 30)


def random_regions(cold_len, misses):
    """Expected distinct REGION-token regions among `misses` distinct tokens drawn at random from the
    cold tokens [0, cold_len) (hypergeometric: a region is missed when none of its tokens is drawn)."""
    full, rest = divmod(cold_len, REGION)

    def none_drawn(size):  # C(cold_len - size, misses) / C(cold_len, misses)
        if cold_len - size < misses:
            return 0.0
        return math.exp(math.lgamma(cold_len - size + 1) - math.lgamma(cold_len - size - misses + 1)
                        - math.lgamma(cold_len + 1) + math.lgamma(cold_len - misses + 1))
    return full * (1 - none_drawn(REGION)) + (1 - none_drawn(rest) if rest else 0.0)


def replay(steps, policy):
    """(hits, selected, host rows read, distinct blocks among the misses, distinct regions among the
    misses, the regions as many misses drawn at random would touch) of one (layer, KV head)'s
    selections under a policy. Session 26 counted sparse misses as an address translation per 4 KiB
    page (a block); session 30 measured one per 64 KiB region touched, or the bytes where misses are
    dense, so the regions are what the misses cost on that machine."""
    kind, _, arg = policy.partition("-")
    hits = selected = read = miss_blocks = miss_regions = random_miss_regions = 0
    lru = OrderedDict()
    prev = set()
    runners = []
    for s, next_runners, cold_len in steps:
        if kind == "last":
            cached = prev
        elif kind == "runners":
            cached = prev | set(runners)
        elif kind == "ahead":
            cached = prev | {i + d for i in prev for d in range(1, int(arg) + 1)}
        else:
            cached = lru
        h = sum(1 for i in s if i in cached)
        miss_blocks += len({i // BLOCK for i in s if i not in cached})
        miss_regions += len({(i - args.sink) // REGION for i in s if i not in cached})
        random_miss_regions += random_regions(cold_len, len(s) - h)
        hits += h
        selected += len(s)
        read += len(s) - h
        if kind == "ahead":  # the prefetched rows that were not already selected last step
            read += len(cached) - len(prev)
        if kind == "lru":
            cap = float(arg) * len(s)
            for i in sorted(s):
                lru.pop(i, None)
                lru[i] = True
            while len(lru) > cap:
                lru.popitem(last=False)
        prev = s
        if kind == "runners":  # read ahead: the new runners-up not already held (last selection and runners-up)
            held = cached | s
            runners = next_runners[:round((float(arg) - 1) * len(s))]
            read += sum(1 for i in runners if i not in held)
    return hits, selected, read, miss_blocks, miss_regions, random_miss_regions


POLICIES = ["last", "lru-1.5", "lru-2", "lru-4", "lru-8", "ahead-1", "ahead-2", "runners-2", "runners-4"]
model = load(args.model)
report = {"model": args.model, "budget": args.budget, "context": args.context, "sink": args.sink,
          "window": args.window, "tasks": {}}
for task in args.tasks:
    gen = text2json if task == "text2json" else needle
    kw = {"max_entities": data.MAX_ENTITIES} if task == "text2json" else {}
    samples = gen.generate(args.samples, args.context, 0, data.count_bytes, **kw)
    totals = {p: [0] * 6 for p in POLICIES}
    per_layer = {p: {} for p in POLICIES}
    steps_total = 0
    for n, s in enumerate(samples):
        p = data.encode_prompt(s["prompt"])
        gold = data.text2json_answer(s) if task == "text2json" else data.needle_answer(s)
        ids = p + list(gold.encode())
        for mod in model.modules():
            if isinstance(mod, M.Attention):
                mod.answer_from = len(p)
        SELECTIONS.clear()
        with torch.no_grad():
            model(torch.tensor([ids]))
        steps_total += len(ids) - len(p)
        for pol in POLICIES:
            for layer, heads in enumerate(SELECTIONS):
                for steps in heads:
                    r = replay(steps, pol)
                    acc = per_layer[pol].setdefault(layer, [0, 0])
                    acc[0] += r[0]
                    acc[1] += r[1]
                    for i in range(6):
                        totals[pol][i] += r[i]
        print(f"{task} sample {n + 1}/{len(samples)}: {len(p)} prompt tokens, {len(ids) - len(p)} answer tokens",
              file=sys.stderr, flush=True)
    rows = {}
    for pol, (h, sel, read, blocks, regions, random_regions_) in totals.items():
        rows[pol] = {"hit_rate": h / sel, "host_rows_per_selected": read / sel,
                     "miss_blocks_per_miss": blocks / max(1, sel - h),
                     "miss_regions_per_miss": regions / max(1, sel - h),
                     "miss_regions_vs_random": regions / max(1e-9, random_regions_),
                     "hit_rate_per_layer": [round(a / b, 4) for _, (a, b) in sorted(per_layer[pol].items())]}
    report["tasks"][task] = {"samples": args.samples, "answer_steps": steps_total, "policies": rows}

print("| task | policy | hit rate | host rows read per selected row | distinct blocks per miss | "
      "distinct 64 KiB regions per miss | regions against random misses | hit rate per layer |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for task, t in report["tasks"].items():
    for pol, r in t["policies"].items():
        print(f"| {task} | {pol} | {r['hit_rate']:.3f} | {r['host_rows_per_selected']:.3f} | "
              f"{r['miss_blocks_per_miss']:.3f} | {r['miss_regions_per_miss']:.3f} | {r['miss_regions_vs_random']:.3f} | "
              + " ".join(f"{x:.2f}" for x in r["hit_rate_per_layer"]) + " |")
if args.out:
    json.dump(report, open(args.out, "w"), indent=1)
