"""CUDA graphs of the offloaded decode (vllm_kvoffload/decode_graphs.py).

The policy runs anywhere. The graphs themselves need a GPU: the same runtime, plan and
queries, step after step, with the decode graphs on and off must give the same outputs bit
for bit (same kernels, same inputs), the same fetch counters, and the graphs must really
replay (one graph per layer and parity of the device cache), across a change of step shape
too."""

import dataclasses

import pytest
import torch

from test_runtime import HQ, D, FlashLayoutImpl, setup  # same folder (pytest prepends it)
from vllm_kvoffload.decode_graphs import GraphPolicy


class Made:
    def __init__(self, key):
        self.key, self.failed = key, None


def test_policy_captures_a_shape_on_its_second_step_and_keeps_one_shape():
    policy, made = GraphPolicy(), []

    def make(key):
        made.append(Made(key))
        return made[-1]

    assert policy.for_step("a", make) is None  # first step of a shape: eager
    first = policy.for_step("a", make)  # second: made (this step captures)
    assert first is made[0] and first.key == "a"
    assert policy.for_step("a", make) is first  # then replayed
    assert policy.for_step("b", make) is None and policy.current is None  # a new shape drops the old
    assert policy.for_step("a", make) is None  # "a" again is a new shape again
    assert policy.for_step(None, make) is None and policy.for_step(None, make) is None  # no graphs asked
    assert len(made) == 1


def test_policy_drops_a_shape_whose_capture_failed_and_does_not_retry_it():
    policy, made = GraphPolicy(), []

    def make(key):
        made.append(Made(key))
        return made[-1]

    policy.for_step("a", make)
    graphs = policy.for_step("a", make)
    graphs.failed = "operation not permitted when stream is capturing"  # as DecodeGraphs.run records it
    for _ in range(3):
        assert policy.for_step("a", make) is None
    assert len(made) == 1
    policy.for_step("b", make)
    assert policy.for_step("b", make) is made[-1] and len(made) == 2  # other shapes still get graphs


def test_plan_pads_widths_and_k_to_buckets():
    from vllm_kvoffload.runtime import PLAN_BUCKETS

    runtime, rows, table, _ = setup(0.2)
    runtime.plan_batched(rows, table)
    b = runtime.batched
    res_step, cold_step, k_step = PLAN_BUCKETS
    assert b["res_table"].shape[1] % res_step == 0 and b["cold_slots"].shape[1] % cold_step == 0
    assert b["k"] % k_step == 0 and b["k"] >= int(b["budgets"].max())


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def decode_steps(runtime, plans, table, queries):
    """Run every layer for each (rows, query); returns each step's outputs per layer, and whether
    graphs were in use at each step."""
    impl = FlashLayoutImpl()
    outs, used = [], []
    for rows, query in zip(plans, queries):
        runtime.plan_batched(rows, table)
        used.append(runtime.graphs is not None and bool(runtime.graphs.graphs))
        step = []
        for name, layer in runtime.layers.items():
            out = torch.full_like(query, float("nan"))
            runtime._decode_batched(name, impl, query, layer.kv_cache, out)
            step.append(out)
        outs.append(step)
    torch.cuda.synchronize()
    return outs, used


@cuda
@pytest.mark.parametrize("scorer, device_cache, host_kv_dtype", [
    ("exact-topk", True, "auto"), ("exact-topk", False, "auto"),
    ("qlandmark-scalar", True, "auto"), ("qlandmark-scalar", False, "auto"), ("qlandmark-scalar", True, "fp8")])
def test_graph_replays_equal_eager_steps(scorer, device_cache, host_kv_dtype):
    runs = {}
    for graphs in (False, True):
        runtime, rows, table, _ = setup(0.2, scorer=scorer, device="cuda", dtype=torch.bfloat16,
                                        device_cache=device_cache, decode_graphs=graphs, host_kv_dtype=host_kv_dtype)
        wider = [dataclasses.replace(r, budget=r.budget + 70) for r in rows]  # k crosses a bucket
        plans = [rows] * 6 + [wider] * 4
        gen = torch.Generator(device="cuda").manual_seed(1)
        base = torch.randn(3, HQ, D, device="cuda", generator=gen)
        # close queries, so that the device cache both hits and misses
        queries = [(base + 0.3 * torch.randn(3, HQ, D, device="cuda", generator=gen)).bfloat16() for _ in plans]
        outs, used = decode_steps(runtime, plans, table, queries)
        runs[graphs] = outs, used, runtime.fetch_stats()
    (eager, eager_used, eager_stats), (graphed, used, stats) = runs[False], runs[True]
    assert not any(eager_used)
    # step 1 runs eagerly, 2 captures, 3 replays (the cache's buffers are allocated at step 1 and
    # keep the shape); the wider budget grows the cache: a new shape, again eager, capture, replay
    assert used == [False, False] + [True] * 4 + [False, False, True, True]
    for step, (a, b) in enumerate(zip(eager, graphed)):
        for layer, (x, y) in enumerate(zip(a, b)):
            assert not x.isnan().any()
            assert torch.equal(x, y), f"step {step}, layer {layer}"
    assert stats == eager_stats
    if device_cache:
        assert stats["cache_hits"] > 0 and stats["cache_hits"] < stats["tokens_gathered"]


def test_a_failed_capture_keeps_the_step_correct_and_eager(monkeypatch):
    """When a capture raises (say a host sync in some scorer's path), the step's output is still
    the eager run's, the step's other layers run eagerly, and the policy then drops the shape for
    good. The capture itself needs a GPU; here it is made to fail."""
    from vllm_kvoffload.decode_graphs import DecodeGraphs

    graphs = DecodeGraphs.__new__(DecodeGraphs)  # its constructor allocates on CUDA
    graphs.key, graphs.failed = "a", None
    graphs.query = graphs.output = None
    graphs.graphs = {}

    def capture(fn, parity):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(graphs, "_capture", capture)
    calls = []

    def layer_fn(query, output, parity):
        calls.append(parity)
        output.copy_(query * 2)

    query, output = torch.arange(3.0), torch.zeros(3)
    graphs.run(0, layer_fn, query, output, 1)
    assert torch.equal(output, query * 2) and calls == [1]
    assert graphs.failed == "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    output.zero_()
    graphs.run(1, layer_fn, query, output, 1)  # the next layer of the same step: eager
    assert torch.equal(output, query * 2) and calls == [1, 1] and not graphs.graphs
    policy = GraphPolicy()
    policy.current, policy.last_key = graphs, "a"
    assert policy.for_step("a", lambda key: pytest.fail("a failed shape is not captured again")) is None
