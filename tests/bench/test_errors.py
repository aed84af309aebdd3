"""Bad input and unreachable servers give clear errors; compare builds the right commands."""

import json
import sys

import pytest

from vllm_kvoffload.bench import compare, server, text2json
from vllm_kvoffload.bench.__main__ import main


def _closed_port() -> int:
    return server.free_port()  # bound then released: nothing listens there


def test_malformed_jsonl_line_is_reported_with_its_number(tmp_path, capsys):
    f = tmp_path / "data.jsonl"
    good = json.dumps({"problem": "p", "answer": json.dumps([{"name": "a", "x": "1", "y": "2"}])})
    f.write_text(good + "\n\n" + good + "\n" + '{"problem": "p", "answer": [}\n')
    with pytest.raises(ValueError, match=r"data\.jsonl:4: not valid JSON"):
        text2json.load(f)
    f.write_text(good + "\n" + json.dumps({"question": "p", "answer": "[]"}) + "\n")
    with pytest.raises(ValueError, match=r"data\.jsonl:2: expected an object with a string 'problem'"):
        text2json.load(f)
    f.write_text(json.dumps({"problem": "p", "answer": "not json"}) + "\n")
    with pytest.raises(ValueError, match=r"data\.jsonl:1: 'answer' is not a JSON list"):
        text2json.load(f)
    # through the CLI: exit code 1 and the line number, before any request is sent
    f.write_text(good + "\n" + "{oops\n")
    rc = main(["text2json", "--data", str(f), "--model", "m", "--output", str(tmp_path / "o"),
               "--base-url", f"http://127.0.0.1:{_closed_port()}/v1", "--no-progress"])
    assert rc == 1
    assert "data.jsonl:2: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("with_model", [False, True])
def test_unreachable_server_clear_error_after_bounded_retries(tmp_path, capsys, tiny_model, with_model):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    argv = ["needle", "--synthetic", "2", "--context-tokens", "600", "--needles", "2",
            "--base-url", url, "--retries", "2", "--output", str(tmp_path / "o"), "--no-progress",
            "--tokenizer", tiny_model]
    if with_model:  # then the first failure is a completion request, not the model listing
        argv += ["--model", tiny_model]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot reach {url} after 2 attempts: APIConnectionError" in err
    if with_model:  # a partial summary is still written
        summary = json.loads((tmp_path / "o" / "summary.json").read_text())
        assert summary["complete"] is False and summary["n_done"] == 0


def test_resume_refuses_other_settings(tmp_path, tiny_model, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"benchmark": "needle", "seed": 1}))
    rc = main(["needle", "--synthetic", "1", "--context-tokens", "600", "--needles", "2", "--model",
               tiny_model, "--output", str(out), "--base-url", "http://127.0.0.1:1/v1", "--seed", "2"])
    assert rc == 1
    assert "holds a run with other settings" in capsys.readouterr().err


def test_bad_values_name_what_is_accepted(tiny_model, tmp_path, capsys):
    with pytest.raises(ValueError, match="--needles 0: accepted 1..128"):
        from vllm_kvoffload.bench import needle
        needle.generate(1, 1000, 0, len, needles=0)
    with pytest.raises(ValueError, match="pass --tokenizer"):
        from vllm_kvoffload.bench import tokens
        tokens.resolve(None, "org/remote-model")
    assert main(["needle", "--synthetic", "1", "--model", tiny_model, "--concurrency", "0",
                 "--context-tokens", "600", "--needles", "1", "--output", str(tmp_path / "o"),
                 "--base-url", "http://127.0.0.1:1/v1"]) == 1
    assert "--concurrency 0 must be >= 1" in capsys.readouterr().err


def test_parse_setting():
    assert server.parse_setting("none") is None
    assert server.parse_setting("exact-topk:budget=0.03") == {"scorer": "exact-topk", "budget": 0.03}
    assert server.parse_setting("exact-topk:budget=64,granularity=block,topp=0.9") == {
        "scorer": "exact-topk", "budget": 64, "granularity": "block", "topp": 0.9}
    assert server.parse_setting("oracle") == {"scorer": "oracle"}
    for bad in ("budget=0.03", "exact-topk:budget", ":budget=1"):
        with pytest.raises(ValueError, match="setting"):
            server.parse_setting(bad)


def test_launch_command_per_setting():
    extra = ["--dtype", "float32"]
    cmd = server.server_cmd("/m", 8101, None, extra)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[3:] == ["--model", "/m", "--host", "127.0.0.1", "--port", "8101", "--dtype", "float32"]
    assert "--additional-config" not in cmd  # 'none' is stock vLLM
    cmd = server.server_cmd("/m", 8102, server.parse_setting("exact-topk:budget=0.03"), extra)
    i = cmd.index("--additional-config")
    assert json.loads(cmd[i + 1]) == {"kv_offload": {"scorer": "exact-topk", "budget": 0.03}}


def test_compare_argument_checks(capsys):
    assert compare.parse_endpoint("exact-topk:budget=0.03=http://h:1/v1") == (
        "exact-topk:budget=0.03", "http://h:1/v1")
    with pytest.raises(ValueError, match="expected NAME=URL"):
        compare.parse_endpoint("http://h:1/v1")
    assert compare.budget_point("exact-topk:budget=0.03") == ("exact-topk", 0.03)
    assert compare.budget_point("stock") is None
    assert compare.budget_point("none")[0] == "none"
    assert main(["compare", "--endpoints", "a=http://127.0.0.1:1/v1", "--", "nosuch"]) == 1
    assert "accepted benchmarks: text2json, needle, html2tsv, throughput" in capsys.readouterr().err
    assert main(["compare", "--endpoints", "a=http://127.0.0.1:1/v1", "--", "needle", "--output", "x"]) == 1
    assert "compare sets --output itself" in capsys.readouterr().err
