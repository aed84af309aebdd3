import pytest
import torch

from conftest import INTERPRET

triton = pytest.importorskip("triton")

from vllm_kvoffload.ops.topk_ref import topk_ref  # noqa: E402
from vllm_kvoffload.ops.triton_kernels import load  # noqa: E402

CASES = [(2, 3, 100, 7), (3, 2, 257, 40), (2, 2, 50, 64)]  # B, Hkv, n_max, k (k > n too)
if not INTERPRET:
    CASES += [(32, 8, 32464, 983), (4, 8, 70001, 2100), (5, 4, 1000, 1000)]
BLOCK = 64 if INTERPRET else 1024  # several tiles per row, the last one partial
# Programs per row: one, several (the last to arrive merges the local selections), and the
# launcher's own choice. (A histogram-radix variant was tried in session 8, 3283f0b: 2.9x slower.)
SELECTS = ["one", "seven"] if INTERPRET else ["one", "three", "seven", "auto"]
SEGMENTS = {"one": 1, "three": 3, "seven": 7, "auto": None}


def select_fn(name):
    fn = load("topk").topk_select
    return lambda *a, **kw: fn(*a, segments=SEGMENTS[name], **kw)


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


def lowest_index_topk(mass, lens, k, budgets=None):
    """The kernels' exact output: topk_ref's selection with ties at the k-th value resolved
    lowest index first (torch.topk, so topk_ref, may pick any of them), zeros past the count."""
    B, Hkv, _ = mass.shape
    idx = torch.zeros(B, Hkv, k, dtype=torch.int32)
    for b in range(B):
        n = int(lens[b])
        kk = min(k, n) if budgets is None else min(k, n, int(budgets[b]))
        for h in range(Hkv):
            order = torch.sort(mass[b, h, :n].cpu(), descending=True, stable=True).indices
            idx[b, h, :kk] = order[:kk].sort().values.int()
    return idx.to(mass.device)


def check(mass, lens, k, idx, cnt, budgets=None):
    """Bit-identical to lowest_index_topk; same counts and the same multiset of selected masses
    as topk_ref (so identical to topk_ref wherever the k-th value has no tie)."""
    ref_idx, ref_cnt = topk_ref(mass, lens, k, budgets=budgets)
    assert torch.equal(cnt, ref_cnt)
    assert torch.equal(idx, lowest_index_topk(mass, lens, k, budgets))
    for b in range(mass.shape[0]):
        for h in range(mass.shape[1]):
            c = int(cnt[b, h])
            sel = mass[b, h].gather(0, idx[b, h, :c].long()).sort().values
            ref = mass[b, h].gather(0, ref_idx[b, h, :c].long()).sort().values
            assert torch.equal(sel, ref)


@pytest.mark.parametrize("fn", SELECTS)
@pytest.mark.parametrize("B,Hkv,n_max,k", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_topk(device, fn, B, Hkv, n_max, k, ties):
    seed = torch.seed() % 2**31
    mass, lens = make_mass(B, Hkv, n_max, device, seed, ties)
    idx = torch.full((B, Hkv, k), -7, dtype=torch.int32, device=device)  # poisoned outputs
    cnt = torch.full((B, Hkv), -7, dtype=torch.int32, device=device)
    out = select_fn(fn)(mass, lens, k, idx=idx, counts=cnt, block=BLOCK)
    assert out[0] is idx and out[1] is cnt
    try:
        check(mass, lens, k, idx, cnt)
    except AssertionError as e:
        raise AssertionError(f"seed {seed}") from e
    arrivals = load("_common")._BUFFERS.get(("arrivals", mass.device))
    assert arrivals is None or not arrivals.any()  # every row's last program reset its counter


@pytest.mark.parametrize("fn", SELECTS)
@pytest.mark.parametrize("B,Hkv,n_max,k", CASES[:2])
def test_topk_per_request_budgets(device, fn, B, Hkv, n_max, k):
    seed = torch.seed() % 2**31
    mass, lens = make_mass(B, Hkv, n_max, device, seed, ties=False)
    budgets = torch.randint(1, k + 1, (B,), dtype=torch.int32).to(device)
    idx, cnt = select_fn(fn)(mass, lens, k, budgets=budgets, block=BLOCK)
    assert (cnt <= budgets[:, None]).all(), seed
    try:
        check(mass, lens, k, idx, cnt, budgets)
    except AssertionError as e:
        raise AssertionError(f"seed {seed}") from e


def edge_rows(kind, Hkv, n, device):
    g = torch.Generator().manual_seed(0)
    if kind == "equal":  # every mass a tie
        return torch.full((1, Hkv, n), 0.25, device=device)
    if kind == "zeros":
        return torch.zeros(1, Hkv, n, device=device)
    if kind == "narrow":  # one binade, shared high mantissa bits: many candidates in every pass
        return (1 + torch.randint(0, 64, (1, Hkv, n), generator=g) * 2.0**-22).to(device)
    if kind == "spread":  # from denormals to 2**40
        return (2.0 ** torch.randint(-149, 41, (1, Hkv, n), generator=g).double()).float().to(device)
    raise ValueError(kind)


@pytest.mark.parametrize("fn", SELECTS)
@pytest.mark.parametrize("kind", ["equal", "zeros", "narrow", "spread"])
@pytest.mark.parametrize("n,k", [(150, 1), (150, 37), (150, 149), (150, 150), (150, 200), (0, 5), (7, 0)])
def test_topk_edge_rows(device, fn, kind, n, k):
    mass = edge_rows(kind, 2, n, device)
    lens = torch.tensor([n], dtype=torch.int32, device=device)
    idx = torch.full((1, 2, k), -7, dtype=torch.int32, device=device)
    cnt = torch.full((1, 2), -7, dtype=torch.int32, device=device)
    select_fn(fn)(mass, lens, k, idx=idx, counts=cnt, block=BLOCK)
    check(mass, lens, k, idx, cnt)


@pytest.mark.parametrize("fn", SELECTS)
@pytest.mark.parametrize("ties", [False, True])
def test_topk_early_exit_changes_nothing(device, fn, ties):
    """The radix passes' early exit (taken on distinct masses, rarely with many ties) gives
    the output of all 8 passes, bit for bit."""
    seed = torch.seed() % 2**31
    mass, lens = make_mass(3, 2, 600, device, seed, ties)
    fast = select_fn(fn)(mass, lens, 40, block=BLOCK)
    full = select_fn(fn)(mass, lens, 40, block=BLOCK, early_exit=False)
    assert torch.equal(fast[0], full[0]) and torch.equal(fast[1], full[1]), f"seed {seed}"
    check(mass, lens, 40, *fast)


def misleading_rows(B, Hkv, n, stride, seed):
    """Every stride-th value (the sample) far above the rest: the threshold lets through fewer
    values than k, and the program must select from the whole row."""
    g = torch.Generator().manual_seed(seed)
    mass = torch.rand(B, Hkv, n, generator=g)
    mass[..., ::stride] += 10
    return mass


def one_value_sample_rows(Hkv, n, k, stride, seed):
    """Every stride-th value (the sample) 0.5, the rest below it but for a few above: per request,
    more than k and fewer than the shortlist's capacity above it (the shortlist holds), more than
    the capacity (the row is selected whole), and fewer than k (0.5 is the k-th largest, ties taken
    in order). The shortlist pass skips empty tiles here (a sample of one value); tiles that do
    keep values must still be stored."""
    g = torch.Generator().manual_seed(seed)
    mass = torch.rand(3, Hkv, n, generator=g) * 0.25
    mass[..., ::stride] = 0.5
    others = torch.tensor([i for i in range(n) if i % stride])
    for b, above in enumerate([3 * k, 2 * n // 3, k // 4]):
        for h in range(Hkv):
            pick = others[torch.randperm(len(others), generator=g)[:above]]
            mass[b, h, pick] = 0.5 + torch.rand(above, generator=g)
    return mass


@pytest.mark.parametrize("fn", SELECTS)
@pytest.mark.parametrize("rows", ["softmax", "ties", "zeros", "three values", "misleading", "one-value sample"])
def test_topk_shortlist_changes_nothing(device, fn, rows):
    """The shortlist (rows longer than its capacity) gives the output of the radix passes over
    the whole row, bit for bit: where it holds the top-k (softmax rows); where the threshold is
    itself the k-th largest value and ties are taken in one more pass (all zeros; three distinct
    values); where the sample misleads (too few values reach the threshold) and the row is
    selected whole; and all three where the sample is one value (the pass then skips empty tiles)."""
    seed = torch.seed() % 2**31
    B, Hkv, n, k, stride = 3, 2, 2000, 40, 4
    assert load("topk").shortlist_cap(k, stride) < n // 7  # even one of seven segments has a shortlist
    if rows in ("softmax", "ties"):
        mass, lens = make_mass(B, Hkv, n, device, seed, rows == "ties")
    else:
        if rows == "zeros":
            mass = torch.zeros(B, Hkv, n)
        elif rows == "three values":
            mass = torch.randint(1, 4, (B, Hkv, n), generator=torch.Generator().manual_seed(seed)) * 0.125
        elif rows == "misleading":
            mass = misleading_rows(B, Hkv, n, stride, seed)
        else:
            mass = one_value_sample_rows(Hkv, n, k, stride, seed)
        mass, lens = mass.to(device), torch.tensor([n, n - 3, n - 250], dtype=torch.int32, device=device)
        for b in range(B):
            mass[b, :, int(lens[b]):] = float("-inf")
    select_fn(fn)(mass, lens, k, block=BLOCK, sample_stride=stride)  # sizes the scratch, then poison it:
    for (name, _), scratch in load("_common")._BUFFERS.items():  # a shortlist entry never written would show
        if name == "topk":
            scratch.fill_(2**31 - 1)
    short = select_fn(fn)(mass, lens, k, block=BLOCK, sample_stride=stride)
    whole = select_fn(fn)(mass, lens, k, block=BLOCK, sample_stride=0)
    assert torch.equal(short[0], whole[0]) and torch.equal(short[1], whole[1]), f"seed {seed}"
    check(mass, lens, k, *short)


def test_topk_refuses_a_negative_sample_stride(device):
    mass, lens = make_mass(1, 1, 10, device, 0, False)
    with pytest.raises(ValueError, match="sample_stride=-1"):
        load("topk").topk_select(mass, lens, 3, sample_stride=-1)
