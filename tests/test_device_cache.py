"""The device cache's row bookkeeping (vllm_kvoffload/device_cache.py): a request keeps its row
across batch reorders, a released request's row goes to the next new one, and a new allocation
(more rows, a wider selection, a longer token map or another factor) makes every row fresh; the
sizes it reports are what it holds, in place and LRU. The gather and attention that use the rows
are tested in tests/csrc_triton/test_triton_gather.py and tests/test_runtime.py."""

import pytest
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


def cache_bytes(rows, width=64, shared=False):
    return DeviceCache.bytes_for(CacheShape(rows, 2, width, 8, torch.bfloat16, 3, shared))


def plan_or_none(cache, req_ids, width=64):
    return cache.plan(list(req_ids), 2, width, 8, torch.bfloat16, 3, torch.device("cpu"), True)


def test_a_cache_over_its_limit_falls_back_to_a_scratch_until_the_batch_fits():
    cache = DeviceCache(limit_bytes=cache_bytes(2))  # two rows of every layer fit; ROW_STEP rows do not
    rows, fresh = plan(cache, ["a", "b", "c"])
    # the scratch: one layer's buffers for every layer, row b for request b, all fresh
    assert rows == [0, 1, 2] and fresh == [1, 1, 1] and cache.shape.shared and cache.shape.rows == 3
    assert len(cache.values) == 1 and DeviceCache.bytes_for(cache.shape) <= cache.limit_bytes
    assert all(a is b for a, b in zip(cache.layer(2, 1), cache.layer(0, 1)))
    key = cache.key()
    rows, fresh = plan(cache, ["c", "a", "b"])
    assert rows == [0, 1, 2] and fresh == [1, 1, 1] and cache.key() == key  # kept, and still refilled
    # the requests kept their rows: without c, a cache of exactly two rows fits
    rows, fresh = plan(cache, ["b", "a"], released={"c"})
    assert rows == [1, 0] and fresh == [1, 1] and not cache.shape.shared and cache.shape.rows == 2
    assert len(cache.values) == 3 and cache.refused_bytes is None
    _, fresh = plan(cache, ["a", "b"])
    assert fresh == [0, 0]  # a cache again: kept from here on
    rows, fresh = plan(cache, ["a", "b"], width=128)  # a wider selection does not fit: the scratch again
    assert fresh == [1, 1] and cache.shape.shared and cache.shape.width == 128


def test_where_not_even_the_scratch_fits_there_is_no_buffer():
    cache = DeviceCache(limit_bytes=cache_bytes(2, shared=True))
    assert plan_or_none(cache, ["a", "b", "c"]) is None  # the per-request path then
    assert cache.shape is None and cache.values == [] and cache.arrays == []
    rows, fresh = plan(cache, ["a", "b"], released={"c"})
    assert rows == [0, 1] and fresh == [1, 1] and cache.shape.shared


def test_a_device_out_of_memory_falls_back_and_nothing_as_large_is_tried_again(monkeypatch):
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
    assert plan_or_none(cache, ids) is None
    # rounded up, then exactly what the batch needs, then the scratch: each refused at its first buffer
    assert tried == [2 * ROW_STEP, ROW_STEP + 1, ROW_STEP + 1]
    assert cache.values == [] and cache.arrays == [] and cache.refused_bytes == cache_bytes(ROW_STEP + 1, shared=True)
    tried.clear()
    assert plan_or_none(cache, ids + ["x"]) is None
    assert tried == []  # every candidate as large as one the device refused: none tried
    rows, fresh = plan(cache, ["r0", "r1"], released=ids[2:] + ["x"])
    assert rows == [0, 1] and fresh == [1, 1] and not cache.shape.shared and cache.shape.rows == 2
    assert cache.refused_bytes is None


def held_bytes(cache: DeviceCache) -> int:
    tensors = [t for kv in cache.values for t in kv] + [t for layer in cache.arrays for parity in layer for t in parity]
    tensors += [t for layer in cache.lru_arrays for t in layer] + ([cache.pos] if cache.pos is not None else [])
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("factor", [1, 3])
def test_bytes_for_counts_every_buffer_the_cache_holds(factor):
    """The size that the limit and the start-up report use is what is allocated, in place and LRU."""
    cache = DeviceCache()
    lru = {"factor": factor, "tokens": 4096} if factor > 1 else {}
    assert cache.plan(["a", "b", "c"], 2, 64, 8, torch.bfloat16, 3, torch.device("cpu"), reuse=True, **lru) is not None
    assert cache.shape.lru == (factor > 1) and cache.shape.slots == factor * 64
    assert DeviceCache.bytes_for(cache.shape) == held_bytes(cache)


def test_an_lru_cache_is_reallocated_for_a_longer_token_map_and_a_new_factor():
    cache = DeviceCache()
    cpu = torch.device("cpu")
    cache.plan(["a"], 2, 64, 8, torch.bfloat16, 3, cpu, reuse=True, factor=2, tokens=1024)
    _, fresh = cache.plan(["a"], 2, 64, 8, torch.bfloat16, 3, cpu, reuse=True, factor=2, tokens=1024)
    assert not fresh.any()
    _, fresh = cache.plan(["a"], 2, 64, 8, torch.bfloat16, 3, cpu, reuse=True, factor=2, tokens=2048)
    assert fresh.all() and cache.shape.tokens == 2048 and cache.lru_arrays[0][0].shape[-1] == 2048
    _, fresh = cache.plan(["a"], 2, 64, 8, torch.bfloat16, 3, cpu, reuse=True, factor=4, tokens=1024)
    assert fresh.all() and cache.shape.factor == 4 and cache.shape.tokens == 2048  # the map never shrinks
