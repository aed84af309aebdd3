"""examples/gpu_offload_bench.py: which child-engine failures the correctness command retries alone, and
the table it prints."""


def test_start_up_races_with_a_neighbour_are_retried_and_nothing_else(load_example):
    bench = load_example("gpu_offload_bench")
    seen = [  # the two errors engines started side by side gave on the H100 (calls 28a and 32c1)
        "exit 1: ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
        "exit 1: Error in memory profiling. Initial free memory 54.54 GiB, current free memory 54.54 GiB. "
        "This happens when other processes sharing the same container release GPU memory while vLLM is profiling",
    ]
    assert all(bench.failed_on_a_neighbour(e) for e in seen)
    for other in (None, "", "exit 1: CUDA error: an illegal memory access was encountered", "timeout after 600 s"):
        assert not bench.failed_on_a_neighbour(other)


def test_correctness_table_has_a_line_per_variant_with_its_figures_or_error(load_example):
    bench = load_example("gpu_offload_bench")
    report = {"trained": {"tokens_per_prompt": 256, "stock_error": None,
                          "stock_again": {"identical_prefix": [256, 256], "max_logprob_diff_on_prefix": 0.0},
                          "budget_3pct": {"identical_prefix": [256, 218], "max_logprob_diff_on_prefix": 0.63,
                                          "fetch": {"cache_hit_rate": 0.4716}},
                          "exact-topk-fp8/full_budget": {"error": "exit 1: Error in memory profiling", "log_tail": ""}}}
    lines = bench.correctness_table(report).splitlines()
    assert len(lines) == 2 + 3
    assert lines[3] == "| trained | budget_3pct | [256, 218] | 0.63 | 47.2% |  |"
    assert lines[4].startswith("| trained | exact-topk-fp8/full_budget |  |  |  | exit 1: Error in memory profiling")
