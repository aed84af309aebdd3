"""The in-place device cache's row bookkeeping (vllm_kvoffload/device_cache.py): a request keeps
its row across batch reorders, a released request's row goes to the next new one, and a new
allocation (more rows, a wider selection) makes every row fresh. The gather and attention that
use the rows are tested in tests/csrc_triton/test_triton_gather.py and tests/test_runtime.py."""

import torch

from vllm_kvoffload.device_cache import ROW_STEP, CacheShape, DeviceCache


def plan(cache, req_ids, released=(), width=64, reuse=True):
    cache.release(released)
    rows, fresh = cache.plan(list(req_ids), kv_heads=2, width=width, head_size=8, dtype=torch.bfloat16,
                             num_layers=3, device=torch.device("cpu"), reuse=reuse)
    return rows.tolist(), fresh.tolist()


def test_rows_follow_requests_and_are_reused_after_release():
    cache = DeviceCache()
    rows, fresh = plan(cache, ["a", "b", "c"])
    assert sorted(rows) == [0, 1, 2] and fresh == [1, 1, 1] and cache.shape.rows == ROW_STEP
    again, fresh = plan(cache, ["c", "a", "b"])  # reordered: the same rows, nothing fresh
    assert again == [rows[2], rows[0], rows[1]] and fresh == [0, 0, 0]
    after, fresh = plan(cache, ["c", "d"], released={"a", "b"})  # d takes a freed row, fresh
    assert after[0] == rows[2] and after[1] in (rows[0], rows[1]) and fresh == [0, 1]


def test_a_new_allocation_makes_every_row_fresh():
    cache = DeviceCache()
    plan(cache, ["a", "b"])
    key = cache.key()
    _, fresh = plan(cache, ["a", "b"], width=128)  # a wider selection: new buffers
    assert fresh == [1, 1] and cache.shape.width == 128 and cache.key() != key
    _, fresh = plan(cache, ["a", "b"], width=64)  # narrower: the buffers stay
    assert fresh == [0, 0] and cache.shape.width == 128
    many = [f"r{i}" for i in range(ROW_STEP + 1)]
    rows, fresh = plan(cache, ["a", "b"] + many)  # more requests than rows
    assert all(fresh) and cache.shape.rows == 2 * ROW_STEP and len(set(rows)) == len(rows)
    k, v = cache.values[0]
    assert k.shape == v.shape == (2 * ROW_STEP, 2, 128, 8) and len(cache.arrays[0]) == 2


def test_with_the_cache_off_every_row_is_fresh():
    cache = DeviceCache()
    plan(cache, ["a", "b"], reuse=False)
    _, fresh = plan(cache, ["a", "b"], reuse=False)
    assert fresh == [1, 1]


def test_rows_of_requests_released_on_a_step_without_cold_tokens_are_freed():
    """The runtime frees released rows as the scheduler's plan releases them, also before steps
    that plan no cache (no cold tokens): else a row would stay taken by a request that ended."""
    from types import SimpleNamespace

    from test_runtime import setup  # same folder (pytest prepends it)

    runtime, rows, table, _ = setup(0.2)
    runtime.plan_batched(rows, table)
    taken = dict(runtime.device_cache.row_of)
    assert taken and set(taken) <= {r.req_id for r in rows}
    runtime.apply_plan(SimpleNamespace(released=list(taken), copies=[]), num_slots=0)
    runtime.plan_batched([r for r in rows if r.cold_slots.numel() == 0], table)  # nothing cold
    assert runtime.device_cache.row_of == {}


def test_each_layer_alternates_its_own_parity():
    """A layer's run reads what its last run wrote, however many plans ran in between."""
    cache = DeviceCache()
    plan(cache, ["a"])
    assert [cache.next_parity(0) for _ in range(3)] == [1, 0, 1] and cache.next_parity(1) == 1
    prev_idx, _, _, new_idx, *_ = cache.layer(0, 0)
    assert prev_idx is cache.arrays[0][1][0] and new_idx is cache.arrays[0][0][0]


def cache_bytes(rows, width=64):
    return DeviceCache.bytes_for(CacheShape(rows, 2, width, 8, torch.bfloat16, 3))


def test_a_cache_over_its_limit_is_not_allocated_until_the_batch_fits():
    cache = DeviceCache(limit_bytes=cache_bytes(2))  # two rows fit, ROW_STEP rows do not
    cache.release([])
    ids = ["a", "b", "c"]
    assert cache.plan(ids, 2, 64, 8, torch.bfloat16, 3, torch.device("cpu"), True) is None
    assert cache.shape is None and cache.values == [] and cache.refused.rows == 3
    # the rows stay assigned: a step later, without c, the two rows fit (exactly, not rounded up)
    rows, fresh = plan(cache, ["b", "a"], released={"c"})
    assert sorted(rows) == [0, 1] and fresh == [1, 1] and cache.shape.rows == 2 and cache.refused is None
    assert DeviceCache.bytes_for(cache.shape) <= cache.limit_bytes
    _, fresh = plan(cache, ["a", "b"])
    assert fresh == [0, 0]  # the cache is kept from here on
    # a wider selection does not fit either: no cache, and no narrower batch is needed to try again
    assert cache.plan(["a", "b"], 2, 128, 8, torch.bfloat16, 3, torch.device("cpu"), True) is None
    rows, fresh = plan(cache, ["a", "b"], width=64)
    assert fresh == [1, 1] and cache.shape.width == 64  # new buffers: what the old rows held is gone


def test_a_device_out_of_memory_gives_no_cache_and_larger_shapes_are_not_tried_again(monkeypatch):
    """The device's own limit: a simulated device that holds buffers of at most ROW_STEP rows."""
    zeros, tried = torch.zeros, []

    def device_zeros(*shape, **kwargs):
        tried.append(shape[0])
        if shape[0] > ROW_STEP:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return zeros(*shape, **kwargs)

    monkeypatch.setattr("vllm_kvoffload.device_cache.torch.zeros", device_zeros)
    cache = DeviceCache()
    ids = [f"r{i}" for i in range(ROW_STEP + 1)]
    assert cache.plan(ids, 2, 64, 8, torch.bfloat16, 3, torch.device("cpu"), True) is None
    assert tried == [2 * ROW_STEP, ROW_STEP + 1]  # rounded up, then exactly what the batch needs
    assert cache.values == [] and cache.arrays == [] and cache.refused.rows == ROW_STEP + 1
    tried.clear()
    assert cache.plan(ids + ["x"], 2, 64, 8, torch.bfloat16, 3, torch.device("cpu"), True) is None
    assert tried == []  # larger than a shape the device refused: not tried
    rows, fresh = plan(cache, ["r0", "r1"], released=ids[2:] + ["x"])
    assert rows == [0, 1] and fresh == [1, 1] and cache.shape.rows == ROW_STEP and cache.refused is None
