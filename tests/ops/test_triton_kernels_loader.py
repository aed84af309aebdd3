import shutil
from pathlib import Path

import pytest

pytest.importorskip("triton")

from vllm_kvoffload.ops.triton_kernels import load, load_from  # noqa: E402

CSRC = Path(__file__).resolve().parents[2] / "csrc_triton"


def test_load_from_imports_another_trees_kernels_beside_these(tmp_path):
    """The GPU sweeps' --baseline: another checkout's kernels in the same process, not this tree's."""
    shutil.copytree(CSRC, tmp_path / "csrc_triton", ignore=shutil.ignore_patterns("__pycache__"))
    topk_src = tmp_path / "csrc_triton" / "topk.py"
    topk_src.write_text(topk_src.read_text().replace("SAMPLE_STRIDE = 16", "SAMPLE_STRIDE = 7"))
    other, ours = load_from(tmp_path, "topk"), load("topk")
    assert other.SAMPLE_STRIDE == 7 and ours.SAMPLE_STRIDE == 16
    assert Path(other.__file__).resolve() == topk_src.resolve()
    assert other.__name__ != ours.__name__ and other._topk_rows is not ours._topk_rows
    assert load_from(tmp_path, "topk") is other  # imported once per root


def test_load_from_names_a_root_without_kernels(tmp_path):
    with pytest.raises(ImportError, match=str(tmp_path)):
        load_from(tmp_path, "topk")
