# Session 27, call a (no vLLM needed): THP settings; GPU tests of the synthetic-ranking kernel and of
# huge-page pools; gpu_gather.py at 8 layers, pinned against huge pages, contiguous slots.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
uname -r; cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag
grep -i -E "memtotal|memfree|hugepages" /proc/meminfo; ulimit -l; ls /sys/class/iommu 2>&1 | head -3
python -c "import pytest" 2>/dev/null && python -m pytest -q -p no:cacheprovider tests/csrc_triton/test_triton_synthetic_ranks.py \
  tests/test_host_memory.py "tests/csrc_triton/test_triton_gather.py::test_gather_from_huge_pages" 2>&1 | tail -5 | tee $OUT/pytest.log
python examples/gpu_gather.py --layers 8 --layouts head-major head-major-kv-outer --host-memory pinned hugepages \
  --hit-rates 1.0 0.8 0.45 --tiles 32 --warps 4 --reps 15 --contiguous-slots 2>&1 | tee $OUT/gather.log | grep -v "^  tile"
grep -i -E "anonhuge" /proc/meminfo
