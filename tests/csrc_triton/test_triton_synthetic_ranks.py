"""The benchmark's one-pass synthetic ranking (csrc_triton/synthetic_ranks.py) against its torch
reference: the same distribution (their random streams differ), masses added exactly, -inf kept,
a new draw per call and the same draw for the same seed."""

import pytest
import torch

from vllm_kvoffload.ops.synthetic_ranks_ref import redraw_ranks_ref

triton = pytest.importorskip("triton")


def inputs(device, n=5000, seed=0):
    g = torch.Generator().manual_seed(seed)
    mass = torch.rand(3, 2, n, generator=g)
    mass[1, :, n // 2:] = float("-inf")  # past a row's cold tokens
    rank = torch.rand(3, 2, n, generator=g)
    return mass.to(device), rank.to(device)


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.55, 1.0])
@pytest.mark.parametrize("n", [5000, 1023])  # not multiples of the block
def test_redraw_matches_the_reference_in_distribution(device, rate, n):
    from csrc_triton.synthetic_ranks import redraw_ranks

    for fn in (redraw_ranks, redraw_ranks_ref):
        mass, rank = inputs(device, n)
        before = rank.clone()
        seed = torch.tensor([12345], dtype=torch.int64, device=device)
        out = fn(mass, rank, seed, rate)
        assert seed.item() == 12346, fn
        changed = (rank != before).float().mean().item()
        assert abs(changed - rate) < 0.03, (fn, changed, rate)
        assert ((rank >= 0) & (rank < 1)).all(), fn
        assert torch.equal(out, mass + rank), fn  # the sum of exactly what it stored
        assert torch.isneginf(out[1, :, n // 2:]).all() and torch.isfinite(out[0]).all(), fn
        if rate > 0:  # the new ranks are uniform, not skewed towards small values
            new = rank[rank != before]
            assert abs(new.mean().item() - 0.5) < 0.03 and new.min() < 0.05 and new.max() > 0.95, fn


def test_seed_decides_the_draw(device):
    from csrc_triton.synthetic_ranks import redraw_ranks

    mass, rank = inputs(device)
    a, b = rank.clone(), rank.clone()
    redraw_ranks(mass, a, torch.tensor([7], dtype=torch.int64, device=device), 0.5)
    redraw_ranks(mass, b, torch.tensor([7], dtype=torch.int64, device=device), 0.5)
    assert torch.equal(a, b)
    seed = torch.tensor([7], dtype=torch.int64, device=device)
    c = rank.clone()
    redraw_ranks(mass, c, seed, 0.5)
    first = c.clone()
    redraw_ranks(mass, c, seed, 0.5)  # the seed advanced: a different draw
    assert (c != first).float().mean().item() > 0.3


@pytest.mark.parametrize("jitter", [0.09, 0.5])
def test_jitter_adds_a_fresh_draw_to_the_sum_not_to_the_ranks(device, jitter):
    """jitter: out = mass + rank + jitter * v with v uniform in [0, 1) and new per call; the stored
    ranks are redrawn as without it."""
    from csrc_triton.synthetic_ranks import redraw_ranks

    for fn in (redraw_ranks, redraw_ranks_ref):
        mass, rank = inputs(device)
        seed = torch.tensor([99], dtype=torch.int64, device=device)
        outs = []
        for _ in range(2):
            out = fn(mass, rank, seed, 0.0, jitter)  # rate 0: the ranks stay, only the jitter moves
            extra = (out - mass - rank)[torch.isfinite(out)] / jitter
            assert extra.min() >= -1e-5 and extra.max() < 1 + 1e-5 and abs(extra.mean().item() - 0.5) < 0.03, fn
            outs.append(out)
        assert torch.isneginf(outs[0][1, :, 2500:]).all(), fn
        assert (outs[0] != outs[1])[torch.isfinite(outs[0])].float().mean() > 0.99, fn  # fresh per call
