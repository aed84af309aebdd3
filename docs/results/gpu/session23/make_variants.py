"""Variant trees of csrc_triton for phase timing of the top-k (experiment, not committed)."""
import re, shutil, sys
from pathlib import Path
root = Path(sys.argv[1]); out = Path(sys.argv[2])
src = (root / "csrc_triton/topk.py").read_text()

def section(text, name):
    i = text.index(f"def {name}(")
    j = text.index("@triton.jit", i)
    return i, j

def patch_fn(text, name, old, new):
    i, j = section(text, name)
    body = text[i:j]
    assert old in body, (name, old)
    return text[:i] + body.replace(old, new) + text[j:]

def stub_fn(text, name):
    i, j = section(text, name)
    body = text[i:j]
    head_end = body.index('"""', body.index('"""') + 3) + 3
    return text[:i] + body[:head_end] + "\n    pass\n\n\n" + text[j:]

variants = {}
variants["base"] = src
# sample threshold only: the shortlist pass scans nothing, no selection
v = stub_fn(src, "_select_given_shortlist")
variants["sample_only"] = patch_fn(v, "_shortlist_pass", "for start in range(0, m, BLOCK):", "for start in range(0, 0, BLOCK):")
# sample + shortlist pass (+ merge), no final selection
variants["sample_shortlist"] = stub_fn(src, "_select_given_shortlist")
# the min/max pass only for the sample (not in _select)
v = src.replace("def _kth_pattern(src, STRIDE: tl.constexpr, m, kk, BLOCK: tl.constexpr, CACHE: tl.constexpr, EARLY: tl.constexpr):",
                "def _kth_pattern(src, STRIDE: tl.constexpr, m, kk, BLOCK: tl.constexpr, CACHE: tl.constexpr, EARLY: tl.constexpr, ONE: tl.constexpr = True):")
v = patch_fn(v, "_kth_pattern", "    if EARLY:\n        lo_v", "    if EARLY and ONE:\n        lo_v")
v = patch_fn(v, "_select", "prefix, exact, _ = _kth_pattern(src, 1, m, kk, BLOCK, CACHE, EARLY)",
             "prefix, exact, _ = _kth_pattern(src, 1, m, kk, BLOCK, CACHE, EARLY, not INDEXED)")
variants["no_minmax_select"] = v
for name, text in variants.items():
    d = out / name / "csrc_triton"
    if d.exists(): shutil.rmtree(d)
    shutil.copytree(root / "csrc_triton", d)
    (d / "topk.py").write_text(text)
    print(name, d)
