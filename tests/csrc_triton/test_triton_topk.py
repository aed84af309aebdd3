import pytest
import torch

from conftest import INTERPRET

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops.topk_ref import topk_ref  # noqa: E402
from vllm_kvoffload.ops.triton_kernels import topk_select  # noqa: E402

CASES = [(2, 3, 100, 7), (3, 2, 257, 40), (2, 2, 50, 64)]  # B, Hkv, n_max, k (k > n too)
if not INTERPRET:
    CASES += [(32, 8, 32464, 983), (4, 8, 70001, 2100), (5, 4, 1000, 1000)]


def make_mass(B, Hkv, n_max, device, seed, ties):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, n_max + 1, (B,), generator=g, dtype=torch.int32)
    lens[0] = n_max
    mass = torch.softmax(torch.randn(B, Hkv, n_max, generator=g) * 4, -1)
    if ties:  # many exact ties and exact zeros (underflowed softmax)
        mass = (mass * 64).round() / 64
    for b, n in enumerate(lens.tolist()):
        mass[b, :, n:] = float("-inf")
    return mass.to(device), lens.to(device)


@pytest.mark.parametrize("B,Hkv,n_max,k", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_topk(device, B, Hkv, n_max, k, ties):
    seed = torch.seed() % 2**31
    mass, lens = make_mass(B, Hkv, n_max, device, seed, ties)
    idx = torch.full((B, Hkv, k), -7, dtype=torch.int32, device=device)
    cnt = torch.full((B, Hkv), -7, dtype=torch.int32, device=device)
    topk_select(mass, lens, k, idx=idx, counts=cnt, block=64 if INTERPRET else 1024)
    ref_idx, ref_cnt = topk_ref(mass, lens, k)
    assert torch.equal(cnt, ref_cnt), seed
    for b in range(B):
        for h in range(Hkv):
            c = int(cnt[b, h])
            got = idx[b, h, :c].long()
            assert (got.diff() > 0).all() and (idx[b, h, c:] == 0).all(), seed
            assert ((got >= 0) & (got < int(lens[b]))).all(), seed
            # same multiset of selected masses (ties may pick different tokens)
            sel = mass[b, h].gather(0, got).sort().values
            ref = mass[b, h].gather(0, ref_idx[b, h, :c].long()).sort().values
            assert torch.equal(sel, ref), seed


@pytest.mark.parametrize("B,Hkv,n_max,k", CASES[:2])
def test_topk_per_request_budgets(device, B, Hkv, n_max, k):
    seed = torch.seed() % 2**31
    mass, lens = make_mass(B, Hkv, n_max, device, seed, ties=False)
    budgets = torch.randint(1, k + 1, (B,), dtype=torch.int32).to(device)
    idx, cnt = topk_select(mass, lens, k, budgets=budgets, block=64 if INTERPRET else 1024)
    ref_idx, ref_cnt = topk_ref(mass, lens, k, budgets=budgets)
    assert torch.equal(cnt, ref_cnt), seed
    assert (cnt <= budgets[:, None]).all(), seed
    for b in range(B):
        for h in range(Hkv):
            c = int(cnt[b, h])
            assert torch.equal(idx[b, h, :c].sort().values, ref_idx[b, h, :c].sort().values), seed
