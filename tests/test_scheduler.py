"""The offload schedulers driven as vLLM's engine core drives them, without a model: vLLM's
real Scheduler / AsyncScheduler, our offload plan, fake sampled tokens.

Under async scheduling (vLLM's default on GPU) the engine schedules step n+1 before step n's
tokens are back. The async offload scheduler must then still decode the whole batch every
step and offload as much as the synchronous one, and give every block and host slot back."""

import pytest
import torch
from vllm.engine.arg_utils import EngineArgs
from vllm.sampling_params import SamplingParams
from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from vllm_kvoffload.kv_spec import OffloadAttentionSpec, register_spec
from vllm_kvoffload.scheduler import OffloadAsyncScheduler, OffloadScheduler

BS, BLOCKS, HOST, PROMPT, OUT, REQUESTS = 16, 200, 256, 300, 60, 4


def make_scheduler(cls, tiny_llama):
    register_spec()
    args = EngineArgs(model=tiny_llama, max_model_len=1024, block_size=BS, dtype="float32",
                      additional_config={"kv_offload": {"scorer": "exact-topk", "window_tokens": 64,
                                                        "sink_tokens": 16}})
    cfg = args.create_engine_config()
    cfg.cache_config.num_gpu_blocks = BLOCKS
    cfg.scheduler_config.async_scheduling = cls is OffloadAsyncScheduler
    spec = OffloadAttentionSpec(block_size=BS, num_kv_heads=2, head_size=8, dtype=torch.float32,
                                sink_tokens=16, window_tokens=64, host_blocks=HOST)
    kv = KVCacheConfig(num_blocks=BLOCKS, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l0"], spec)])
    return cls(vllm_config=cfg, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(cfg),
               block_size=BS)


def drive(scheduler, in_flight):
    """Schedule until every request finishes, with ``in_flight`` steps scheduled before the
    oldest one's tokens come back (1: synchronous, 2: async). Returns the decode rows of each
    step and the blocks the plans moved to the host."""
    for i in range(REQUESTS):
        scheduler.add_request(Request(str(i), list(range(1, PROMPT + 1)),
                                      SamplingParams(max_tokens=OUT, ignore_eos=True), None))
    pending, decoded, copies = [], [], 0
    for _ in range(4 * OUT):
        if not scheduler.has_requests() and not pending:
            break
        out = scheduler.schedule()
        copies += len(out.kv_offload_plan.copies)
        decoded.append(sum(n == 1 for n in out.num_scheduled_tokens.values()))
        pending.append(out)
        if len(pending) < in_flight and scheduler.has_requests():
            continue
        done = pending.pop(0)
        ids = list(done.num_scheduled_tokens)
        scheduler.update_from_output(done, ModelRunnerOutput(
            req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=[[7] for _ in ids]))
    return decoded, copies


def test_async_scheduler_decodes_the_whole_batch_with_a_step_in_flight(tiny_llama):
    sync_decoded, sync_copies = drive(make_scheduler(OffloadScheduler, tiny_llama), in_flight=1)
    scheduler = make_scheduler(OffloadAsyncScheduler, tiny_llama)
    decoded, copies = drive(scheduler, in_flight=2)
    steady = decoded[1:OUT - 1]  # after the prefill step, before requests finish
    assert steady == [REQUESTS] * len(steady), decoded
    assert copies == sync_copies > 0  # the same blocks go cold
    stats = scheduler.kv_offload_stats()
    assert stats["num_running"] == 0 and stats["host_blocks_free"] == stats["host_blocks_total"]
    assert stats["device_blocks_free"] == stats["device_blocks_total"]


def test_sync_scheduler_with_a_step_in_flight_decodes_every_other_step(tiny_llama):
    """Why the async class exists: the synchronous one, driven with a step in flight, schedules only
    requests whose last token is back, so half the steps decode nothing (session 6's half batches)."""
    decoded, _ = drive(make_scheduler(OffloadScheduler, tiny_llama), in_flight=2)
    assert 0 in decoded[1:OUT - 1] and decoded.count(REQUESTS) < 0.6 * len(decoded)


@pytest.mark.parametrize("cls", [OffloadScheduler, OffloadAsyncScheduler])
def test_schedulers_carry_the_offload_plan(cls, tiny_llama):
    scheduler = make_scheduler(cls, tiny_llama)
    assert isinstance(scheduler, cls) and scheduler.offload_managers
