"""The offload manager against vLLM's real BlockPool: blocks leave the device only
outside sink + window, only while decoding, and every block returns to its pool."""

import torch
from vllm.v1.core.block_pool import BlockPool

from vllm_kvoffload.kv_spec import HostSlotAllocator, OffloadAttentionSpec, OffloadManager

BS = 16


def make_manager(num_blocks=64, host_blocks=32, sink=4, window=40):
    spec = OffloadAttentionSpec(block_size=BS, num_kv_heads=2, head_size=8, dtype=torch.float32,
                                sink_tokens=sink, window_tokens=window, host_blocks=host_blocks)
    pool = BlockPool(num_gpu_blocks=num_blocks, enable_caching=False, hash_block_size=BS)
    manager = OffloadManager(spec, block_pool=pool, enable_caching=False, kv_cache_group_id=0,
                             scheduler_block_size=BS)
    return manager, pool


def decode_step(manager, req, processed):
    """What the scheduler does for a one-token decode."""
    manager.decoding_request = req
    manager.remove_skipped_blocks(req, processed, num_prompt_tokens=0)
    manager.decoding_request = None
    manager.allocate_new_blocks(req, processed + 1, processed + 1)


def test_offloads_only_the_gap_between_sink_and_window():
    manager, pool = make_manager()
    free0 = pool.get_num_free_blocks()
    manager.allocate_new_blocks("a", 200, 200)  # a 200-token prompt: 13 blocks
    assert pool.get_num_free_blocks() == free0 - 13
    manager.remove_skipped_blocks("a", 200, num_prompt_tokens=200)  # not a decode step: nothing
    assert manager.take_plan().copies == []
    decode_step(manager, "a", 200)
    plan = manager.take_plan()
    # window start (200 - 40) // 16 = 10: blocks 1..9 leave, block 0 holds the sink
    assert [c[1] for c in plan.copies] == list(range(1, 10))
    assert len({c[3] for c in plan.copies}) == 9  # distinct host slots
    assert manager.device_blocks_held("a") == 13 - 9
    assert pool.get_num_free_blocks() == free0 - 4
    blocks = manager.req_to_blocks["a"]
    assert all(blocks[i].is_null for i in range(1, 10)) and not blocks[0].is_null


def test_device_blocks_stay_bounded_while_decoding():
    manager, pool = make_manager(host_blocks=64)
    manager.allocate_new_blocks("a", 100, 100)
    bound = 1 + -(-40 // BS) + 1  # sink + window + the growing block
    for processed in range(100, 400):
        decode_step(manager, "a", processed)
        assert manager.device_blocks_held("a") <= bound
    copies = manager.take_plan().copies
    assert [c[1] for c in copies] == list(range(1, 1 + len(copies)))  # contiguous, in order


def test_every_block_returns_on_free():
    manager, pool = make_manager()
    free0 = pool.get_num_free_blocks()
    for req in ("done", "aborted", "preempted"):
        manager.allocate_new_blocks(req, 150, 150)
        decode_step(manager, req, 150)
    assert manager.host.num_free < 32
    for req in ("done", "aborted", "preempted"):
        manager.free(req)
    assert pool.get_num_free_blocks() == free0
    assert manager.host.num_free == 32
    assert sorted(manager.take_plan().released) == ["aborted", "done", "preempted"]


def test_full_host_pool_keeps_blocks_on_device():
    manager, pool = make_manager(host_blocks=3)
    manager.allocate_new_blocks("a", 200, 200)
    decode_step(manager, "a", 200)
    assert len(manager.take_plan().copies) == 3
    assert manager.device_blocks_held("a") == 13 - 3
    manager.free("a")
    assert manager.host.num_free == 3


def test_host_slot_allocator_counts():
    alloc = HostSlotAllocator(2)
    a, b = alloc.allocate(), alloc.allocate()
    assert alloc.allocate() is None and alloc.num_free == 0
    alloc.free([a, b])
    assert alloc.num_free == 2 and alloc.allocated_total == 2  # a refused allocation is not counted
    alloc.allocate()
    assert alloc.allocated_total == 3  # a counter of blocks gone cold, not of slots in use


def test_preempted_in_the_same_step_never_reuses_a_slot_twice():
    manager, pool = make_manager(host_blocks=12)
    manager.allocate_new_blocks("a", 200, 200)
    manager.allocate_new_blocks("b", 200, 200)
    decode_step(manager, "a", 200)  # 9 copies for a
    manager.free("a")  # preempted within the same scheduling step
    decode_step(manager, "b", 200)  # b may now take a's slots
    plan = manager.take_plan()
    assert all(c[0] == "b" for c in plan.copies) and plan.released == ["a"]
    slots = [c[3] for c in plan.copies]
    assert len(slots) == len(set(slots)) == 9
