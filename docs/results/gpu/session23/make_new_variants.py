import shutil, sys
from pathlib import Path
sys.path.insert(0, ".gpu/exp")
root = Path("."); out = Path(".gpu/exp/trees")
src = (root / "csrc_triton/topk.py").read_text()
def section(text, name):
    i = text.index(f"def {name}("); j = text.index("@triton.jit", i); return i, j
def patch_fn(text, name, old, new):
    i, j = section(text, name); body = text[i:j]; assert old in body, (name, old)
    return text[:i] + body.replace(old, new) + text[j:]
v = {}
v["new"] = src
v["new_sample_only"] = patch_fn(src, "_shortlist_pass", "for start in range(0, m, BLOCK):", "for start in range(0, 0, BLOCK):")
v["new_skipempty"] = patch_fn(src, "_threshold_and_shortlist", "c, n_eq = _shortlist_pass(src, src_off, m, tau, short_bits, short_idx, CAP, BLOCK, False)",
                              "c, n_eq = _shortlist_pass(src, src_off, m, tau, short_bits, short_idx, CAP, BLOCK, True)")
v["new_noappend"] = patch_fn(src, "_shortlist_pass", "            _append(bits, i + src_off, keep, c, short_bits, short_idx, CAP)\n            c += tl.sum(keep, 0)",
                             "            c += tl.sum(keep, 0)")
for name, text in v.items():
    d = out / name / "csrc_triton"
    if d.exists(): shutil.rmtree(d)
    shutil.copytree(root / "csrc_triton", d); (d / "topk.py").write_text(text)
