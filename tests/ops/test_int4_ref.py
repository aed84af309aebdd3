"""The 4-bit row format of the host pool (``ops/int4_ref.py``)."""

import pytest
import torch

from vllm_kvoffload.ops.int4_ref import pack_int4_ref, row_bytes, unpack_int4_ref


def test_row_format_nibble_pairs_then_the_scale():
    """Byte j holds element j (low nibble) and j + D/2 (high nibble), each q + 8; the last 4 bytes are
    the fp32 scale max|x| / 7."""
    x = torch.tensor([[7.0, -7.0, 1.0, 0.0, 3.0, 2.0, -1.0, 6.0]])  # max |x| 7: scale 1, q = x
    rows = pack_int4_ref(x)
    assert rows.shape == (1, row_bytes(8)) == (1, 8) and rows.dtype == torch.uint8
    q = (x + 8).int()[0]
    assert rows[0, :4].tolist() == [int(q[j]) | int(q[j + 4]) << 4 for j in range(4)]
    assert rows[0, 4:].view(torch.float32).item() == 1.0
    assert torch.equal(unpack_int4_ref(rows, torch.float32), x)


@pytest.mark.parametrize("D", [64, 128])
def test_round_trip_within_half_a_step(D):
    torch.manual_seed(0)
    x = torch.randn(4, 3, D) * torch.exp2(torch.randint(-6, 6, (4, 3, 1)).float())
    y = unpack_int4_ref(pack_int4_ref(x), torch.float32)
    step = x.abs().amax(-1, keepdim=True) / 7
    assert ((y - x).abs() <= step / 2 * (1 + 1e-6)).all()
    assert (y - x).abs().max() > 0  # four bits do round
    # the largest element is +-7 steps: exact up to the rounding of 7 x (max / 7)
    torch.testing.assert_close(y.abs().amax(-1), x.abs().amax(-1), rtol=2e-7, atol=0)


def test_zero_rows_and_ties():
    x = torch.zeros(2, 16)
    x[1, :3] = torch.tensor([7.0, 0.5, 1.5])  # scale 1: 0.5 and 1.5 are ties, rounded to even (0 and 2)
    y = unpack_int4_ref(pack_int4_ref(x), torch.float32)
    assert torch.equal(y[0], x[0])
    assert y[1, :3].tolist() == [7.0, 0.0, 2.0]


def test_refuses_a_head_size_that_is_no_multiple_of_8():
    with pytest.raises(AssertionError, match="multiple of 8, got 12"):
        row_bytes(12)
