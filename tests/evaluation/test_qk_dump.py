"""The trained-model Q/K dump: shapes, keys/values/queries against independent computations,
needle positions against the prompt, and the selection benchmark reading it."""

import json
import math

import pytest
import torch

from vllm_kvoffload.evaluation import qk_dump, selection
from vllm_kvoffload.training import data

LAYER, CONTEXT, STEPS = 1, 1536, 2


@pytest.fixture(scope="module")
def model():
    return qk_dump.load_model()


@pytest.fixture(scope="module")
def run(model):
    """One dump, with hooks that record what the layer really computed: its input (for an
    independent K/V/Q computation) and the attention output of every decode step (o_proj's input)."""
    attn = model.model.layers[LAYER].self_attn
    seen = {"x": [], "o": []}
    hooks = [attn.register_forward_pre_hook(lambda m, a: seen["x"].append(a[0][0].clone())),
             attn.o_proj.register_forward_pre_hook(lambda m, a: seen["o"].append(a[0][0].clone()))]
    try:
        d = qk_dump.dump("needle", CONTEXT, [LAYER], STEPS, seed=0, model=model)[LAYER]
    finally:
        for h in hooks:
            h.remove()
    return d, seen


def test_loader_matches_transformers(model):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(qk_dump.MODEL, dtype=torch.float32).eval()
    ids = torch.tensor([data.encode_prompt("The access code of the teal vault is 123456.")])
    with torch.no_grad():
        a, b = model(ids), hf(ids).logits
    assert (a - b).abs().max() < 1e-3 * b.abs().max()


def test_shapes_and_prompt(model, run):
    d, _ = run
    c = model.cfg
    n = d["prompt_len"]
    assert abs(n - CONTEXT) < 64 and d["ids"].shape == (n,) and d["ids"][0] == data.USER
    assert d["q"].shape == (STEPS, c.heads, c.head_dim)
    assert d["k"].shape == d["v"].shape == (c.kv_heads, n, c.head_dim)
    assert d["k_recent"].shape == (c.kv_heads, d["start"] + STEPS, c.head_dim)
    assert d["needles"].shape == (c.kv_heads, 6) and (d["needles"][0] == d["needles"][1]).all()
    assert d["step_positions"].tolist() == list(range(n + d["start"], n + d["start"] + STEPS))


def test_keys_values_queries_are_the_layers_own(model, run):
    d, seen = run
    attn, c = model.model.layers[LAYER].self_attn, model.cfg
    n, s = d["prompt_len"], d["start"]
    # independent K/V: the layer's prefill input through k_proj/v_proj, RoPE from selection.rope
    x = seen["x"][0]
    assert x.shape[0] == n
    with torch.no_grad():
        k = (x @ attn.k_proj.weight.T).view(n, c.kv_heads, c.head_dim).transpose(0, 1)
        v = (x @ attn.v_proj.weight.T).view(n, c.kv_heads, c.head_dim).transpose(0, 1)
    assert not torch.allclose(d["k"], k, atol=1e-2 * k.abs().max())  # the dump's keys are post-RoPE
    k = selection.rope(k, torch.arange(n), c.rope_theta)
    assert torch.allclose(d["k"], k, atol=1e-4 * k.abs().max())
    assert torch.allclose(d["v"], v, atol=1e-5 * v.abs().max())
    # queries: attention over prompt + decoded keys reproduces the layer's real output at each step
    keys, vals = torch.cat([d["k"], d["k_recent"]], 1), torch.cat([d["v"], d["v_recent"]], 1)
    for j in range(STEPS):
        upto = n + s + j + 1  # step j sees the prompt and answer tokens 0..s+j
        out = selection.attention(d["q"][j], keys[:, :upto], vals[:, :upto], c.head_dim ** -0.5)
        real = seen["o"][1 + s + j].view(c.heads, c.head_dim)  # call 0 is the prefill
        assert torch.allclose(out, real, atol=1e-4 * real.abs().max())


def test_steps_copy_the_needle_code(run):
    d, _ = run
    ids = d["ids"].tolist()
    codes = {g["code"] for g in d["gold"]}
    # the captured steps predict the first digits of a needle's code ...
    assert d["predicted"].isdigit() and len(d["predicted"]) == STEPS
    assert d["needle_scope"] == "read" and len(d["needle_codes"]) == 1
    code = d["needle_codes"][0]
    assert code in codes and code.startswith(d["predicted"])
    # ... and the needles are that code's digits in the prompt, inside its needle sentence
    pos = d["needles"][0].tolist()
    assert pos == list(range(pos[0], pos[0] + 6)) and bytes(ids[p] for p in pos).decode() == code
    key = next(g["key"] for g in d["gold"] if g["code"] == code)
    line = qk_dump.NEEDLE_LINE.format(key=key, code=code).encode()
    assert bytes(ids[pos[-1] + 1 - len(line) + 1 : pos[-1] + 2]) == line
    # every needle of the prompt is found
    assert d["needles_all"].shape[1] == 6 * len(d["gold"])
    assert sorted(bytes(ids[p] for p in d["needles_all"][0].tolist()).decode()[i:i + 6]
                  for i in range(0, 6 * len(d["gold"]), 6)) == sorted(codes)


def test_step_needles_and_selection_benchmark(model, run, tmp_path):
    d = qk_dump.dump("needle", CONTEXT, [LAYER], STEPS, seed=0, needles="step", model=model)[LAYER]
    assert d["needles"].shape == (STEPS, model.cfg.kv_heads, 1)
    ids = d["ids"].tolist()
    for j in range(STEPS):  # each step's needle is the prompt digit it predicts
        assert chr(ids[int(d["needles"][j, 0, 0])]) == d["predicted"][j]
    path = tmp_path / "qk.pt"
    torch.save(d, path)
    out = tmp_path / "sel.json"
    assert selection.main(["--qk", str(path), "--scorers", "oracle", "qlandmark", "quest",
                           "--budgets", "0.03", "--out", str(out)]) == 0
    rows = {r["scorer"]: r for r in json.loads(out.read_text())["results"]}
    assert all(0 <= r["needle_recall"] <= 1 for r in rows.values())  # per-step needles are scored
    assert all(r["mass_recall"] <= rows["oracle"]["mass_recall"] + 1e-4 for r in rows.values())
    assert rows["oracle"]["tokens_selected"] == math.ceil(0.03 * (d["prompt_len"] // 32 * 32))
