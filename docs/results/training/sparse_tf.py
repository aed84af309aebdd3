"""Teacher-forced answers of held-out Text2JSON at 8K under full attention and under exact-topk's
selection (torch, this script): sinks + local window dense, the top budget of cold tokens per KV
head by softmax mass summed over the GQA group. Per model: answer tokens whose argmax differs from
the gold, by class (quote, other punctuation, letters, digits), and the gold's margin at quotes.
With ``--stale 0 1``, also a selection one step old: each answer position attends to the tokens
selected by the query of the position ``stale`` before it (a selection that a fetch could have
read during the step before), its own sinks and window dense.
With ``--prev-layer``, also a selection predicted one layer early: layer l >= 1 selects with its own
query projection applied to layer l-1's input (normed by layer l's input norm), as a fetch started
during layer l-1 would (InfiniGen's idea, without its partial weights); the recall of the layer's
own selection is reported too.
With ``--cold-dtypes fp8 int4-g128 ...``, also the selection read from a host pool of that precision:
the selected cold tokens' keys and values rounded as the pool would store them (fp8 e4m3, as
``--kv-offload-host-kv-dtype fp8`` stores them; int4-gG: symmetric 4-bit with one scale per G
dimensions of each token and KV head, as ``--kv-offload-host-kv-dtype int4`` stores them at G = head size;
a suffix -k or -v rounds the keys or the values alone), the selection itself and the sinks and window exact.
Usage: python sparse_tf.py NAME=CKPT ... [--samples N] [--budget 0.03] [--stale 0 1 ...] [--prev-layer]
       [--cold-dtypes fp8 int4-g128 int4-g32]"""
import argparse, json, math, torch, torch.nn.functional as F
from vllm_kvoffload.training import data
from vllm_kvoffload.training import model as M
from vllm_kvoffload.bench import text2json
from vllm_kvoffload.evaluation.exact_mass import gqa_cold_mass

ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="+")
ap.add_argument("--samples", type=int, default=8)
ap.add_argument("--budget", type=float, default=0.03)
ap.add_argument("--sink", type=int, default=16)     # 4 sink tokens, rounded up to a 16-token block
ap.add_argument("--window", type=int, default=256)
ap.add_argument("--stale", type=int, nargs="+", default=[0],
                help="selections made by the query this many positions back (0: the position's own)")
ap.add_argument("--prev-layer", action="store_true",
                help="also select with a query predicted from the layer before (layer 0: its own)")
ap.add_argument("--cold-dtypes", nargs="+", default=[],
                help="also attend to the selection as a pool of this precision stores it: fp8, int4-gG (-k, -v: keys or values alone)")
ap.add_argument("--out", default=None)
args = ap.parse_args()
torch.set_num_threads(2)

MODE = {"sparse": False, "stale": 0, "prev_layer": False, "cold_dtype": None}
PREV = {"resid": None}     # the last layer's input (residual stream), for --prev-layer
RECALL = []  # per (layer >= 1, sample): shares of the own selection in the predicted one, in last
             # step's own, and in the two together


def pool_round(x, dtype):
    """x [Hkv, T, D] as a host pool of ``dtype`` would return it: fp8 e4m3 (values as stored, unscaled), or
    int4-gG: per token and KV head, each group of G dimensions scaled by its absolute maximum / 7 and
    rounded to the integers -7..7."""
    if dtype == "fp8":
        return x.to(torch.float8_e4m3fn).float()
    g = int(dtype.split("-g")[1])
    xs = x.unflatten(-1, (-1, g))
    scale = xs.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 7
    return ((xs / scale).round().clamp(-7, 7) * scale).flatten(-2)


def layer_forward(self, x, cos, sin, cache=None):
    prev, PREV["resid"] = PREV["resid"], x
    self.self_attn.predicted_x = None if prev is None else self.input_layernorm(prev)
    x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
    return x + self.mlp(self.post_attention_layernorm(x))
M.Layer.forward = layer_forward
def forward(self, x, cos, sin, cache=None):
    B, T, _ = x.shape; c = self.cfg; rep = c.heads // c.kv_heads
    q, k, v = self.rotated_qkv(x, cos, sin)
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True)
    if MODE["sparse"]:  # rows a0..T-1 (the decode steps) attend to hot + selected only
        a0 = self.answer_from; Ta = T - a0; st = MODE["stale"]
        j = torch.arange(T).unsqueeze(0)                          # key positions
        def hot_cold(t):
            causal = j <= t
            hot = causal & ((j < args.sink) | (j > t - args.window))
            return hot, causal & ~hot
        hot, cold = hot_cold(torch.arange(a0, T).unsqueeze(1))    # at the query positions
        _, cold_sel = hot_cold(torch.arange(a0 - st, T - st).unsqueeze(1))  # where the selection was made
        logits = (q[0, :, a0:] @ kk[0].transpose(-1, -2)) / c.head_dim ** 0.5   # [H, Ta, T]
        kt = torch.tensor([math.ceil(args.budget * (p + 1)) for p in range(a0 - st, T - st)])  # budget of the seq length

        def select(qs):  # [H, T, D] queries -> the selection [Hkv, Ta, T] made from rows a0-st..T-st-1
            mass = gqa_cold_mass(qs[:, a0 - st:T - st], kk[0], cold_sel, c.kv_heads)  # [Hkv, Ta, T]
            top = mass.topk(int(kt.max()), -1).indices          # [Hkv, Ta, kmax]
            keep = torch.arange(top.shape[-1]).view(1, 1, -1) < kt.view(1, -1, 1)
            sel = torch.zeros(c.kv_heads, Ta, T, dtype=torch.bool)
            return sel.scatter_(-1, top, keep.expand(c.kv_heads, -1, -1).contiguous())
        sel = select(q[0])
        if MODE["prev_layer"] and self.predicted_x is not None:
            own = sel
            sel = select(self.rotated_qkv(self.predicted_x, cos, sin)[0][0])
            n_own = max(1, own[:, 1:].sum().item())
            RECALL.append(((own & sel).sum().item() / max(1, own.sum().item()),
                           (own[:, 1:] & own[:, :-1]).sum().item() / n_own,  # hits of a cache of last step's selection
                           (own[:, 1:] & (own[:, :-1] | sel[:, 1:])).sum().item() / n_own))  # ... with the prediction prefetched
        allowed = (hot.unsqueeze(0) | (sel & cold.unsqueeze(0))).repeat_interleave(rep, 0)
        dt = MODE["cold_dtype"]
        if dt is None:
            p = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
            out = out.clone(); out[0, :, a0:] = p @ vv[0]
        else:  # the selected cold tokens as the pool returns them; sinks and window exact
            base, parts = (dt[:-2], dt[-1]) if dt[-2:] in ("-k", "-v") else (dt, "kv")  # which of K, V are rounded
            kq, vq = ((pool_round(t[0], base) if which in parts else t[0]).repeat_interleave(rep, 0)
                      for t, which in ((k, "k"), (v, "v")))
            logits = torch.where(hot, logits, (q[0, :, a0:] @ kq.transpose(-1, -2)) / c.head_dim ** 0.5)
            p = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
            out = out.clone(); out[0, :, a0:] = (p * hot) @ vv[0] + (p * ~hot) @ vq
    return self.o_proj(out.transpose(1, 2).reshape(B, T, c.heads * c.head_dim))
M.Attention.forward = forward

def load(path):  # a training checkpoint.pt, or an exported model folder (the default config: the shipped size)
    if path.endswith(".pt"):
        ck = torch.load(path); cfg, sd = M.ModelConfig(**ck["config"]), ck["state_dict"]
    else:
        from safetensors.torch import load_file
        cfg, sd = M.ModelConfig(), load_file(path + "/model.safetensors")
    m = M.LlamaLM(cfg); m.load_state_dict({k: v.float() for k, v in sd.items()}); m.eval()
    return m

def cls(b):
    ch = chr(b)
    return "quote" if ch == '"' else "digit" if ch.isdigit() else "letter" if ch.isalpha() else "space" if ch == " " else "punct"

samples = text2json.generate(args.samples, 8192, 0, data.count_bytes, max_entities=data.MAX_ENTITIES)
report = {}
for spec in args.models:
    name, path = spec.split("=", 1); m = load(path)
    modes = {"full": 0, **{"sparse" if st == 0 else f"sparse-stale{st}": st for st in args.stale}}  # mode -> stale
    if args.prev_layer:
        modes["sparse-prev-layer"] = 0
    for dt in args.cold_dtypes:
        modes[f"sparse-{dt}"] = 0
    agg = {mode: {"wrong": {}, "tokens": {}, "quote_margins": []} for mode in modes}
    for s in samples:
        p = data.encode_prompt(s["prompt"]); gold = list(s["gold"].encode()); ids = p + gold
        for mod in m.modules():
            if isinstance(mod, M.Attention): mod.answer_from = len(p)
        for mode, st in modes.items():
            MODE["sparse"], MODE["stale"], MODE["prev_layer"] = mode != "full", st, mode == "sparse-prev-layer"
            MODE["cold_dtype"] = next((dt for dt in args.cold_dtypes if mode == f"sparse-{dt}"), None)
            PREV["resid"] = None
            with torch.no_grad(): lg = m(torch.tensor([ids]))[0, len(p) - 1:-1]   # predicts gold
            tgt = torch.tensor(gold)
            g = lg.gather(1, tgt[:, None])[:, 0]
            other = lg.scatter(1, tgt[:, None], float("-inf")).max(1).values
            margin = (g - other).tolist(); pred = lg.argmax(1).tolist()
            a = agg[mode]
            for i, b in enumerate(gold):
                c_ = cls(b); a["tokens"][c_] = a["tokens"].get(c_, 0) + 1
                if pred[i] != b: a["wrong"][c_] = a["wrong"].get(c_, 0) + 1
                if c_ == "quote": a["quote_margins"].append(margin[i])
        print(name, "sample done", flush=True)
    for mode, a in agg.items():
        qm = sorted(a["quote_margins"])
        a["quote_margin_p5_p50"] = [qm[len(qm) // 20], qm[len(qm) // 2]]; a["quotes_below_2"] = sum(x < 2 for x in qm)
        print(f"{name} {mode}: wrong/total by class", {k: f"{a['wrong'].get(k, 0)}/{v}" for k, v in a["tokens"].items()},
              "quote margin p5/p50 %.2f/%.2f" % tuple(a["quote_margin_p5_p50"]), "quotes with margin < 2:", a["quotes_below_2"], flush=True)
        del a["quote_margins"]
    if RECALL:
        recall, last, union = (sum(r[i] for r in RECALL) / len(RECALL) for i in range(3))
        agg["prev_layer"] = {"recall_of_own_selection": recall, "own_in_last_steps": last,
                             "own_in_last_steps_or_predicted": union}
        print(f"{name}: the predicted selection holds {recall:.3f} of the layer's own; last step's selection "
              f"{last:.3f}, the two together {union:.3f} (mean over layers >= 1 and samples)", flush=True)
        RECALL.clear()
    report[name] = agg
if args.out: json.dump(report, open(args.out, "w"), indent=1)
