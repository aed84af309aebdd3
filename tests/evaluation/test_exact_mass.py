import torch

from vllm_kvoffload.evaluation.exact_mass import gqa_cold_mass


def test_mass_is_each_heads_softmax_over_cold_keys_summed_per_group():
    g = torch.Generator().manual_seed(0)
    H, Hkv, Tq, T, D = 6, 2, 5, 9, 4
    q, k = torch.randn(H, Tq, D, generator=g), torch.randn(H, T, D, generator=g)
    cold = torch.rand(Tq, T, generator=g) < 0.5
    cold[2] = False  # a row with no cold key
    got = gqa_cold_mass(q, k, cold, Hkv)
    assert got.shape == (Hkv, Tq, T)
    for kv in range(Hkv):
        for t in range(Tq):
            want = torch.zeros(T)
            idx = cold[t].nonzero().flatten()
            for h in range(kv * H // Hkv, (kv + 1) * H // Hkv):
                if len(idx):
                    want[idx] += torch.softmax(q[h, t] @ k[h, idx].T / D ** 0.5, -1)
            torch.testing.assert_close(got[kv, t], want)
