#!/usr/bin/env python
"""Count a Triton kernel's SASS instructions per loop iteration, without a GPU.

Triton compiles for an NVIDIA target on any machine (``triton.compile`` with a ``GPUTarget``), and
its wheel ships ``nvdisasm`` and ``cuobjdump``. This script compiles one of the decode kernels at
the engine's shape (Llama-3.1-8B heads: 32 query, 8 KV, 128; block 16), with the 16-byte
divisibility Triton would specialize on for the engine's pointers and strides, then lists every
loop (a backward branch) with its instruction count and mix, and the kernel's registers. That is
where session 19 found the kernels' waste (docs/kernels.md). The GPU runs another Triton version,
so counts locate work; only a GPU timing says what it costs.

    python examples/sass_count.py qscalar                 # qlandmark-scalar's first scoring pass
    python examples/sass_count.py sparse-decode           # attention, fp8 selections
    python examples/sass_count.py topk
    python examples/sass_count.py qscalar --root /path/to/other/checkout   # another tree's kernels
    python examples/sass_count.py qscalar --keep /tmp/sass                 # also keep .sass/.ttgir/.ptx
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def kernel_spec(name: str, module):
    """(jit function, constexprs, pointer types, aligned args, warps, stages) of a kernel at the engine's shape."""
    if name == "qscalar":
        fn = module._summary_logits
        const = dict(G_PAD=16, D=128, BS=16, R_PAD=16, BLOCK_N=128, KIND=3, F32=False, LOCAL_CB=False, DECODE=3)
        if "ROWS" in fn.arg_names:
            const["ROWS"] = 4
        if "TM" in fn.arg_names:  # the shipped epilogue layout (session 20)
            const.update(TM=module.QSCALAR_TOKEN_MAJOR, NCOL=16)
        logits = "*fp16" if getattr(module, "QSCALAR_LOGITS", None) is torch.float16 else "*fp32"
        ptrs = {"q_ptr": "*fp32", "s_ptr": "*u8", "cb_ptr": "*u8", "slots_ptr": "*i32", "len_ptr": "*i32",
                "lg_ptr": logits, "pm_ptr": "*fp32", "ps_ptr": "*fp32"}
        aligned = list(ptrs) + ["s_qb", "s_qh", "s_sslot", "s_sh", "Hq"]
        return fn, const, ptrs, aligned, 4, 3
    if name == "sparse-decode":
        fn = module._sparse_decode_partial
        const = dict(G_PAD=16, D=128, BS=16, BLOCK_N=64, HAS_VALID=False, F32=False)
        if "ROW_ALIGN" in fn.arg_names:
            const["ROW_ALIGN"] = 16
        if "G_MERGE" in fn.arg_names:  # the split-K merge in the last program (session 24)
            const.update(G_MERGE=4, BLOCK_C=module.MERGE_BLOCK_C)
        if "HAS_ROWS" in fn.arg_names:  # the in-place device cache's rows (session 24)
            const["HAS_ROWS"] = True
        ptrs = {"q_ptr": "*bf16", "kv_ptr": "*bf16", "bt_ptr": "*i32", "res_len_ptr": "*i32", "sk_ptr": "*fp8e4nv",
                "sv_ptr": "*fp8e4nv", "sel_len_ptr": "*i32", "valid_ptr": "*i32", "rows_ptr": "*i32", "m_ptr": "*fp32",
                "l_ptr": "*fp32", "acc_ptr": "*fp32", "arrivals": "*i32", "out_ptr": "*bf16"}
        aligned = list(ptrs) + ["s_qb", "s_qh", "s_kv", "s_kblk", "s_ktok", "s_kh", "s_st", "Hq"]
        return fn, const, ptrs, aligned, 4, 3 if "G_MERGE" in fn.arg_names else 2  # the default stages
    if name == "topk":
        fn = module._topk_rows
        const = dict(S=1, BLOCK=2048, HAS_BUDGET=True, EARLY=True, STRIDE=16)
        ptrs = {p: "*i32" for p in ("len_ptr", "bud_ptr", "idx_ptr", "cnt_ptr", "scratch_bits", "scratch_idx",
                                     "arrivals", "short_bits", "short_idx")}
        ptrs["mass_ptr"] = "*fp32"
        return fn, const, ptrs, list(ptrs) + ["Hkv"], 4, 3
    raise ValueError(name)


def compile_sass(name: str, module, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, const, ptrs, aligned, warps, stages = kernel_spec(name, module)
    signature = {a: ("constexpr" if a in const else ptrs.get(a, "fp32" if a == "qk_scale" else "i32"))
                 for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned if a in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 128), options={"num_warps": warps, "num_stages": stages})


def loops(sass: str) -> list[tuple[int, collections.Counter]]:
    """(instructions, opcode counts) of every loop body: from a label to a branch back to it."""
    labels, ins = {}, []
    for line in sass.splitlines():
        if m := re.match(r"^\s*\.(L_x_\d+):", line):
            labels[m.group(1)] = len(ins)
        elif m := re.match(r"\s+/\*[0-9a-f]{4,}\*/\s*(.*?);?\s*(/\*.*)?$", line):
            ins.append(m.group(1))
    found = []
    for i, text in enumerate(ins):
        m = re.search(r"BRA\s+.*?`?\(?\.?(L_x_\d+)", text)
        if m and labels.get(m.group(1), i) < i:  # a branch to itself is the end-of-kernel trap, not a loop
            body = ins[labels[m.group(1)]:i + 1]
            ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split(" ")[0].split(".")[0] for x in body)
            found.append((len(body), ops))
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kernel", choices=["qscalar", "sparse-decode", "topk"])
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the checkout whose csrc_triton to compile")
    p.add_argument("--arch", type=int, default=90, help="compute capability (90: H100/H200)")
    p.add_argument("--keep", help="a folder to keep the .sass, .ttgir and .ptx in")
    a = p.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default, stated to quiet its warning
    sys.path.insert(0, a.root)
    module = importlib.import_module({"qscalar": "csrc_triton.score_summary", "sparse-decode": "csrc_triton.sparse_decode",
                                      "topk": "csrc_triton.topk"}[a.kernel])
    compiled = compile_sass(a.kernel, module, a.arch)
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([bin_dir / "nvdisasm", "-c", cubin], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([bin_dir / "cuobjdump", "--dump-resource-usage", cubin], capture_output=True, text=True).stdout
    if a.keep:
        Path(a.keep).mkdir(parents=True, exist_ok=True)
        for ext, text in (("sass", sass), ("ttgir", compiled.asm["ttgir"]), ("ptx", compiled.asm["ptx"])):
            (Path(a.keep) / f"{a.kernel}.{ext}").write_text(text)
    regs = re.search(r"REG:(\d+)", usage)
    total = sum(1 for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line))
    print(f"{a.kernel} ({module.__file__}), sm_{a.arch}, Triton {triton.__version__}: {total} instructions, "
          f"{regs.group(1) if regs else '?'} registers per thread")
    for n, ops in loops(sass):
        print(f"  loop of {n} instructions: " + ", ".join(f"{op} {c}" for op, c in ops.most_common(10)))


if __name__ == "__main__":
    main()
