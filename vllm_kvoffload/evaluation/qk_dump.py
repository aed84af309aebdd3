"""Dump real post-RoPE Q/K/V of the shipped trained model for the selection benchmark.

    python -m vllm_kvoffload.evaluation.qk_dump --task needle --context 8192 --layer 3 --steps 8 --out /tmp/qk.pt
    python -m vllm_kvoffload.evaluation.selection --qk /tmp/qk.pt --out docs/results/selection-trained.json

Loads ``vllm_kvoffload/models/kvoffload-tiny`` (the Hugging Face folder) into the pure-torch
``training.model.LlamaLM`` on CPU, encodes one held-out prompt (integer seed; training only uses
string seeds) in the chat format vLLM serves, prefills it, decodes greedily, and saves for one
layer (or several, ``--layer 1 3 --out /tmp/qk-{layer}.pt``)::

    {"q": [steps, Hq, D]   post-RoPE queries of consecutive decode steps,
     "k": [Hkv, N, D]      post-RoPE keys of the N prompt tokens (the model's own KV cache),
     "v": [Hkv, N, D]      their values,
     "needles": [Hkv, M]   prompt token positions the captured steps must read (see below),
     ...}                  plus metadata (prompt ids, answer, step positions, the keys and values
                           of the decoded tokens before the last captured step: ``k_recent``,
                           ``v_recent`` [Hkv, R, D]).

Decode step ``j`` is the query of the ``j``-th generated token, fed back at position ``N + j``;
it predicts answer token ``j + 1`` (the first answer token comes from the prefill, whose queries
the engine never selects for). ``--start code`` (the needle default) starts the capture at the
step that predicts the first digit of the first code in the answer, so the steps are the ones
that copy a code out of the context; ``--start N`` starts at answer token N; text2json starts at 0.

Needles (needle task): the token positions of the six code digits of each needle sentence
``The access code of <key> is <code>.``, found in the prompt's bytes (the tokenizer is
byte-level: token = 1 + byte offset, after ``<|user|>``) and checked by decoding. ``--needles
read`` (default) keeps the codes that the captured steps predict (matched by value, so a code the
model binds to the wrong key still counts as the one it reads); ``--needles all`` keeps every
needle's code; both are [Hkv, 6 * codes]. ``--needles step`` gives each step its own needle,
[steps, Hkv, 1]: the prompt position of the digit that step predicts (the token a copy head
reads; -1 for a step that predicts no code digit). The same positions are used for every KV
head. Text2JSON dumps have no needles (an empty [Hkv, 0]): its answer copies names and
attribute values, not one planted token set.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

from vllm_kvoffload.training import data
from vllm_kvoffload.training.model import LlamaLM, ModelConfig, apply_rope

MODEL = Path(__file__).resolve().parents[1] / "models" / "kvoffload-tiny"
NEEDLE_LINE = "The access code of {key} is {code}."


def load_model(path: str | Path = MODEL, dtype: torch.dtype = torch.float32) -> LlamaLM:
    """An exported Hugging Face folder (config.json + model.safetensors) as a ``LlamaLM`` on CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    hf = json.loads((path / "config.json").read_text())
    cfg = ModelConfig(vocab_size=hf["vocab_size"], hidden=hf["hidden_size"], layers=hf["num_hidden_layers"],
                      heads=hf["num_attention_heads"], kv_heads=hf["num_key_value_heads"],
                      head_dim=hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"]),
                      intermediate=hf["intermediate_size"], rope_theta=hf["rope_theta"],
                      rms_eps=hf["rms_norm_eps"], max_position=hf["max_position_embeddings"])
    model = LlamaLM(cfg)
    model.load_state_dict({k: v.to(dtype) for k, v in load_file(str(path / "model.safetensors")).items()})
    return model.to(dtype).eval()


def make_prompt(task: str, context: int, seed: int, needles: int = data.MAX_NEEDLES) -> dict:
    """One held-out sample of the accuracy benchmark's generators (integer seed, first sample)."""
    from vllm_kvoffload.bench import needle, text2json

    if task == "needle":
        return needle.generate(1, context, seed, data.count_bytes, needles=needles)[0]
    if task == "text2json":
        return text2json.generate(1, context, seed, data.count_bytes, max_entities=data.MAX_ENTITIES)[0]
    raise ValueError(f"unknown task {task!r}; accepted: needle, text2json")


def needle_positions(sample: dict, ids: list[int]) -> dict[str, list[int]]:
    """code -> token positions of its six digits in the encoded prompt ``ids``."""
    raw = sample["prompt"].encode("utf-8")
    offset = 1  # <|user|> precedes the prompt's first byte (data.encode_prompt)
    if ids[:offset] != [data.USER] or bytes(ids[offset : offset + len(raw)]) != raw:
        raise ValueError("ids are not data.encode_prompt(sample['prompt'])")
    out = {}
    for n in sample["gold"]:
        line = NEEDLE_LINE.format(**n).encode("utf-8")
        at = raw.find(line)
        if at < 0 or raw.find(line, at + 1) >= 0:
            raise ValueError(f"needle line {line!r} found {raw.count(line)} times in the prompt")
        start = offset + at + len(line) - 1 - len(n["code"])
        pos = list(range(start, start + len(n["code"])))
        if bytes(ids[p] for p in pos).decode() != n["code"]:
            raise AssertionError(f"positions {pos} do not decode to {n['code']}")
        out[n["code"]] = pos
    return out


def as_bytes(tokens: list[int]) -> bytes:
    """Token ids as bytes, one byte per token (specials as '?'), so indices stay token indices."""
    return bytes(t if t < 256 else ord("?") for t in tokens)


def codes_read(answer: list[int], predicted: range, codes: list[str]) -> list[str]:
    """Codes (of ``codes``) of which some digit lies at an answer token index in ``predicted``."""
    hit = []
    for m in re.finditer(rb"\d{6}", as_bytes(answer)):
        code = m.group().decode()
        if code in codes and code not in hit and any(i in predicted for i in range(*m.span())):
            hit.append(code)
    return hit


def step_source(answer: list[int], index: int, by_code: dict[str, list[int]]) -> int:
    """Prompt position of the code digit that answer token ``index`` copies, or -1."""
    for m in re.finditer(rb"\d{6}", as_bytes(answer)):
        code = m.group().decode()
        if code in by_code and m.start() <= index < m.end():
            return by_code[code][index - m.start()]
    return -1


@torch.no_grad()
def capture(model: LlamaLM, ids: list[int], layers: list[int], steps: int, start: int | str = 0,
            max_new: int = 400) -> dict:
    """Prefill ``ids``, decode greedily and capture, for each of ``layers``, the post-RoPE queries
    of ``steps`` consecutive decode steps from answer index ``start`` (an int, or ``"code"``: the
    step that predicts the first digit of the answer's first six-digit run) and the prompt's
    keys and values from the layer's KV cache. Returns {"answer": [...], "start": s, "layers":
    {layer: {"q", "k", "v", "k_recent", "v_recent"}}}."""
    cfg = model.cfg
    queries: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    hooks = []
    for i in layers:
        def pre(mod, args, i=i):  # the query exactly as Attention.forward computes it
            x, cos, sin = args[:3]
            if x.shape[1] == 1:  # decode steps only
                b = x.shape[0]
                q = mod.q_proj(x).view(b, 1, cfg.heads, cfg.head_dim).transpose(1, 2)
                queries[i].append(apply_rope(q, cos, sin)[0, :, 0].float())
        hooks.append(model.model.layers[i].self_attn.register_forward_pre_hook(pre))
    try:
        n = len(ids)
        dev = next(model.parameters()).device
        caches: list[dict] = [{} for _ in model.model.layers]
        logits = model(torch.tensor([ids], device=dev), caches, 0)
        answer: list[int] = [int(logits[0, -1].argmax())]

        def first_step() -> int | None:
            if isinstance(start, int):
                return start
            m = re.search(rb"\d{6}", as_bytes(answer))
            return None if m is None else max(m.start() - 1, 0)  # the step whose output is the first digit

        while True:
            s = first_step()
            if s is not None and len(answer) > s + steps:
                break
            if answer[-1] == data.EOS or len(answer) >= max_new:
                raise RuntimeError(f"decoding ended ({len(answer)} tokens) before {steps} steps from "
                                   f"{start!r}: {bytes(t for t in answer if t < 256)!r}")
            logits = model(torch.tensor([[answer[-1]]], device=dev), caches, n + len(answer) - 1)
            answer.append(int(logits[0, -1].argmax()))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for i in layers:
        k, v = caches[i]["k"][0].float(), caches[i]["v"][0].float()
        out[i] = {"q": torch.stack(queries[i][s : s + steps]), "k": k[:, :n].clone(), "v": v[:, :n].clone(),
                  "k_recent": k[:, n : n + s + steps].clone(), "v_recent": v[:, n : n + s + steps].clone()}
    return {"answer": answer, "start": s, "layers": out}


def attention_stats(d: dict, budget: float = 0.015) -> dict:
    """How the true attention of a dump's steps is spread (causal, over prompt + decoded tokens),
    averaged over steps and query heads: ``cold_share`` (mass on the N prompt tokens), ``top_share``
    (of that, the share on the top ``budget`` of prompt tokens per query head: the oracle's mass
    recall) and ``needle_share`` (of that, the share on the needle positions)."""
    q, k, recent = d["q"].float(), d["k"].float(), d["k_recent"].float()
    steps, hq, dim = q.shape
    hkv, n, _ = k.shape
    keys = torch.cat([k, recent], 1)
    logits = torch.einsum("shgd,hnd->shgn", q.view(steps, hkv, hq // hkv, dim), keys) * dim ** -0.5
    visible = n + d["start"] + torch.arange(steps) + 1  # step j sees the prompt and answer[0..start+j]
    logits = logits.masked_fill(torch.arange(keys.shape[1]) >= visible[:, None, None, None], float("-inf"))
    p = logits.softmax(-1)
    cold = p[..., :n].sum(-1)
    pc = p[..., :n] / cold[..., None]
    top = pc.topk(math.ceil(budget * n), -1).values.sum(-1)
    out = {"cold_share": cold.mean().item(), "top_share": top.mean().item()}
    nd = d["needles"]
    if nd.dim() == 3:  # per step: the share on the step's own needle, over the steps that have one
        has = (nd[:, 0] >= 0).any(-1)
        if has.any():
            pos = nd[:, 0].clamp_min(0)  # [steps, M]
            share = torch.stack([pc[t][..., pos[t][nd[t, 0] >= 0]].sum(-1) for t in range(steps)])
            out["needle_share"] = share[has].mean().item()
    elif nd.numel():
        out["needle_share"] = pc[..., nd[0]].sum(-1).mean().item()
    return out


def dump(task: str = "needle", context: int = 8192, layers: list[int] | tuple[int, ...] = (3,), steps: int = 8,
         seed: int = 0, start: int | str | None = None, needles: str = "read", model: LlamaLM | None = None,
         model_path: str | Path = MODEL, dtype: torch.dtype = torch.float32) -> dict[int, dict]:
    """{layer: the dump dict} for one held-out sample (see the module docstring)."""
    model = model if model is not None else load_model(model_path, dtype)
    sample = make_prompt(task, context, seed)
    ids = data.encode_prompt(sample["prompt"])
    if start is None:
        start = "code" if task == "needle" else 0
    cap = capture(model, ids, list(layers), steps, start)
    s, answer = cap["start"], cap["answer"]
    answer_bytes = bytes(t for t in answer if t < 256)
    hkv = model.cfg.kv_heads
    meta = {"task": task, "context": context, "seed": seed, "steps": steps, "start": s,
            "prompt_len": len(ids), "ids": torch.tensor(ids), "answer": answer_bytes.decode("utf-8", "replace"),
            "step_positions": torch.arange(len(ids) + s, len(ids) + s + steps),
            "predicted": bytes(t for t in answer[s + 1 : s + steps + 1] if t < 256).decode("utf-8", "replace"),
            "dtype": str(dtype).removeprefix("torch."), "model": str(model_path)}
    needle_pos = torch.empty(model.cfg.kv_heads, 0, dtype=torch.long)
    if task == "needle":
        by_code = needle_positions(sample, ids)
        read = codes_read(answer, range(s + 1, s + steps + 1), list(by_code))
        if needles == "step":
            scope, chosen = "step", read
            source = torch.tensor([step_source(answer, s + 1 + j, by_code) for j in range(steps)])
            needle_pos = source[:, None, None].repeat(1, hkv, 1)  # [steps, Hkv, 1]
        else:
            scope = "read" if needles == "read" and read else "all"  # all: asked for, or no code is read
            chosen = read if scope == "read" else list(by_code)
            needle_pos = torch.tensor(sorted(p for c in chosen for p in by_code[c]), dtype=torch.long).repeat(hkv, 1)
        meta.update(needle_codes=chosen, codes_read=read, needle_scope=scope,
                    needles_all=torch.tensor(sorted(p for ps in by_code.values() for p in ps)).repeat(hkv, 1),
                    gold=sample["gold"], asked=sample["asked"])
    out = {}
    for i, t in cap["layers"].items():
        out[i] = {**t, "needles": needle_pos.clone(), "layer": i, **meta}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Evaluate a dump with: python -m vllm_kvoffload.evaluation.selection --qk OUT")
    ap.add_argument("--task", choices=("needle", "text2json"), default="needle")
    ap.add_argument("--context", type=int, default=8192, help="prompt length in tokens (default 8192)")
    ap.add_argument("--layer", type=int, nargs="+", default=[3],
                    help="layer(s) to capture; with several, --out must contain {layer}")
    ap.add_argument("--steps", type=int, default=8, help="consecutive decode steps captured (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="held-out sample seed (integer; default 0)")
    ap.add_argument("--start", default=None,
                    help="first captured step: 'code' (the step predicting the first code digit; needle "
                         "default) or an answer token index (text2json default 0)")
    ap.add_argument("--needles", choices=("read", "all", "step"), default="read",
                    help="needle task: digits of the codes the captured steps predict (read), of every needle "
                         "(all), or per step the one digit the step copies (step)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--model", default=str(MODEL), help="exported Hugging Face folder (default: the shipped model)")
    ap.add_argument("--out", default="/tmp/qk.pt", help="output .pt; may contain {layer}")
    args = ap.parse_args(argv)
    if len(args.layer) > 1 and "{layer}" not in args.out:
        ap.error("several --layer values need an --out with {layer}")
    start = None if args.start is None else (args.start if args.start == "code" else int(args.start))
    t0 = time.time()
    model = load_model(args.model, getattr(torch, args.dtype))
    if not all(0 <= i < model.cfg.layers for i in args.layer):
        ap.error(f"--layer: the model has layers 0..{model.cfg.layers - 1}")
    dumps = dump(args.task, args.context, args.layer, args.steps, args.seed, start, args.needles, model=model,
                 model_path=args.model, dtype=getattr(torch, args.dtype))
    command = "python -m vllm_kvoffload.evaluation.qk_dump " + " ".join(argv if argv is not None else sys.argv[1:])
    for i, d in dumps.items():
        d["command"] = command.strip()
        out = Path(args.out.format(layer=i))
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(d, out)
        stats = ", ".join(f"{k} {v:.3f}" for k, v in attention_stats(d).items())
        print(f"layer {i}: q {tuple(d['q'].shape)} k {tuple(d['k'].shape)} needles {tuple(d['needles'].shape)} "
              f"-> {out}; attention: {stats}")
    d = next(iter(dumps.values()))
    print(f"answer: {d['answer']!r}")
    print(f"steps {d['start']}..{d['start'] + args.steps - 1} predict {d['predicted']!r}"
          + (f"; needle codes {d['needle_codes']}" if args.task == "needle" else "")
          + f" ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
