import json
import re

import pytest

from vllm_kvoffload.bench import needle, text2json
from vllm_kvoffload.training import data


@pytest.mark.parametrize("step,progress", [(3, 0.0), (5, 0.2), (11, 0.5)])
def test_batches_are_seeded_and_weighted_on_answers(step, progress):
    a = data.make_batch(0, step, progress, 8192, 0.1)
    b = data.make_batch(0, step, progress, 8192, 0.1)
    c = data.make_batch(0, step + 1, progress, 8192, 0.1)
    assert a.ids.equal(b.ids) and not a.ids.equal(c.ids)
    assert int((a.ids != data.PAD).sum()) >= 8192 - a.ids.shape[0]  # counted in real tokens
    lo, hi = data.phase(progress)[0]
    assert lo <= a.context <= hi
    for row in range(a.ids.shape[0]):
        n = int((a.weights[row] > 0).sum())
        assert a.targets[row, n - 1] == data.EOS  # the last weighted target ends the answer
        answer = a.targets[row][a.weights[row] == 1.0][:-1].tolist()
        text = bytes(answer).decode()
        prompt = bytes(t for t in a.ids[row, :n].tolist() if t < 256).decode()
        if re.fullmatch(r"[a-z]+\n[a-z]+", prompt):  # the letters warm-up: the prompt is the string
            assert prompt.startswith(text + "\n")
        elif "Copy the following lines" in prompt:
            assert text in prompt  # the copy warm-up repeats its prompt's lines
        elif text.startswith("["):  # a Text2JSON answer: its own gold, so it scores 100
            assert text2json.sample_score(text, json.loads(text)) == 1.0
            assert all(e["name"] in prompt for e in json.loads(text))
        else:
            for line in text.split("\n"):
                key, code = line.split(" is ")
                assert f"The access code of {key} is {code}." in prompt


def test_curriculum_reaches_the_target_range():
    assert data.phase(0.99)[0] == (4096, 16384)
    assert data.phase(0.0)[0][1] <= 4096


def test_held_out_seeds_differ_from_training_seeds():
    held = text2json.generate(2, 2048, 0, data.count_bytes, max_entities=4)
    train, _ = data.make_sample("text2json", 2048, "train/0/0/0")
    assert train["prompt"] not in {s["prompt"] for s in held}
    with pytest.raises(ValueError, match="unknown task"):
        data.make_sample("summarise", 2048, "x")


def test_needle_answer_follows_the_question_order():
    s = needle.generate(1, 1024, 5, data.count_bytes, needles=4)[0]
    ans = data.needle_answer(s)
    assert [l.split(" is ")[0] for l in ans.split("\n")] == s["asked"]
    assert needle.score_one(ans, s)["recall"] == 1.0
