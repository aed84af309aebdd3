"""examples/plot_throughput.py: both figures are written from a throughput.json, and the
ratio-against-hits figure takes only offload runs that report a hit rate, from session 24 on."""

import json

import pytest

pytest.importorskip("matplotlib")


def result(config, tok_s, hit=None, ratio=None, context=130000):
    r = {"config": config, "n_requests": 8, "decode_tok_s": tok_s, "context": context, "budget": 0.03,
         "device_cache": True}
    if hit is not None:
        r["fetch"] = {"cache_hit_rate": hit}
    if ratio is not None:
        r["speedup_vs_stock"] = ratio
    return r


def data():
    return {"device": "test GPU", "runs": [
        {"session": 23, "commit": "old", "command": "x throughput --context 130000",
         "results": [result("stock", 100.0), result("qlandmark-scalar", 300.0, 1.0, 3.0)]},
        {"session": 26, "commit": "abc", "command": "x throughput --context 130000 --synthetic-miss-rates 0.55",
         "results": [result("stock", 125.0), result("qlandmark-scalar", 160.0, 0.46, 1.28),
                     result("qlandmark-scalar", 170.0, None, 1.36)]},
        {"session": 26, "commit": "def", "command": "x throughput",
         "results": [result("stock", 520.0, context=32768), result("qlandmark-scalar", 636.0, 0.8, 1.22, 32768)]},
    ]}


def test_hit_points_take_offload_runs_with_hits_from_session_24(load_example):
    points = load_example("plot_throughput").hit_points(data())
    assert points == {130000: [(0.46, 1.28, 26, "abc")], 32768: [(0.8, 1.22, 26, "def")]}


def test_both_figures_are_written(tmp_path, monkeypatch, load_example):
    (tmp_path / "throughput.json").write_text(json.dumps(data()))
    monkeypatch.setattr("sys.argv", ["plot_throughput.py", "--results", str(tmp_path)])
    load_example("plot_throughput").main()
    for name in ("throughput.png", "throughput-vs-hits.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
