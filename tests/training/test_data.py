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
    longest = int((a.weights > 0).sum(1).max())  # the longest row's targets; the rest is unweighted padding
    assert a.ids.shape[1] % data.ALIGN == 0 and a.ids.shape[1] - data.ALIGN < longest <= a.ids.shape[1]
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


def test_mix_replaces_the_long_context_phases_only():
    mix = data.parse_mix("text2json=1")
    assert data.phase(0.5, mix)[1] == mix and data.phase(0.99, mix)[1] == mix
    assert data.phase(0.1, mix)[1] == data.CURRICULUM[0][2]  # the short phases keep their own
    assert data.phase(0.5)[1] == data.MIX
    batch = data.make_batch(0, 4, 0.5, 6000, 0.1, mix)
    for row in range(batch.ids.shape[0]):
        answer = batch.targets[row][batch.weights[row] == 1.0][:-1].tolist()
        assert json.loads(bytes(answer).decode())  # every sample is Text2JSON


@pytest.mark.parametrize("text,message", [
    ("summary=1", "'summary=1' is not TASK=SHARE"), ("needle", "'needle' is not TASK=SHARE"),
    ("needle=lots", "share 'lots' of needle is not a number"), ("copy=-0.5", "must be >= 0"),
    ("copy=0,needle=0", "must not all be 0")])
def test_bad_mix_is_named(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data.parse_mix(text)


@pytest.mark.parametrize("task", ["text2json", "needle"])
def test_decision_weight_falls_on_the_first_byte_of_each_looked_up_value(task):
    mix = data.parse_mix(f"{task}=1")
    plain = data.make_batch(0, 2, 0.5, 4000, 0.1, mix)
    heavy = data.make_batch(0, 2, 0.5, 4000, 0.1, mix, decision_weight=5.0)
    assert heavy.ids.equal(plain.ids)
    for row in range(heavy.ids.shape[0]):
        answer_at = (plain.weights[row] == 1.0).nonzero().flatten()
        raw = bytes(plain.targets[row, answer_at][:-1].tolist())  # offsets are in bytes (tokens)
        answer = raw.decode()
        marked = [int(i) - int(answer_at[0]) for i in (heavy.weights[row] == 5.0).nonzero().flatten()]
        if task == "text2json":
            values = [v for e in json.loads(answer) for v in e.values()]
            expected = [m.end() for m in re.finditer(b'": "', raw)]
        else:
            values = [line.split(" is ")[1] for line in answer.split("\n")]
            expected = [m.end() for m in re.finditer(b" is ", raw)]
        assert marked == expected and len(marked) == len(values)
        assert [raw[i] for i in marked] == [v.encode()[0] for v in values]
        assert (heavy.weights[row] != plain.weights[row]).sum() == len(marked)  # nothing else changes


def test_ambiguous_offsets_are_where_the_prompt_continues_a_value_prefix_two_ways():
    prompt = b"Silverpine Robotics is in Seoul. Silverpine Analytics is in Denver. Redstone is in Seoul."
    answer = (b'[{"name": "Silverpine Analytics", "city": "Denver"}, '
              b'{"name": "Redstone", "city": "Seoul"}]')
    offsets = data.ambiguous_offsets(prompt, answer)
    # "Silverpine " goes on as "R" or "A"; "S" as "i" or "e"; "Se", "Seoul" etc. have one continuation;
    # "D" and "R" start one word each ("Redstone" and "Robotics" differ only from their second byte)
    at = {answer[:i].decode(): chr(answer[i]) for i in offsets}
    assert at == {'[{"name": "Silverpine ': "A", '[{"name": "S': "i",
                  answer[:answer.index(b"Seoul") + 1].decode(): "e",
                  answer[:answer.index(b"Redstone") + 1].decode(): "e"}


def test_ambiguous_decisions_add_weight_only_inside_text2json_values():
    mix = data.parse_mix("text2json=1")
    first = data.make_batch(0, 2, 0.5, 4000, 0.1, mix, decision_weight=5.0)
    both = data.make_batch(0, 2, 0.5, 4000, 0.1, mix, decision_weight=5.0, ambiguous=True)
    assert both.ids.equal(first.ids) and both.answer.equal(first.answer)
    added = (both.weights != first.weights)
    assert added.any() and (both.weights[added] == 5.0).all() and (first.weights[added] == 1.0).all()
    assert not (added & ~both.answer).any()
    needles = data.make_batch(0, 2, 0.5, 4000, 0.1, data.parse_mix("needle=1"), decision_weight=5.0)
    assert needles.weights.equal(data.make_batch(0, 2, 0.5, 4000, 0.1, data.parse_mix("needle=1"),
                                                 decision_weight=5.0, ambiguous=True).weights)


def test_answer_mask_covers_the_answer_whatever_its_weights():
    mix = data.parse_mix("text2json=1")
    plain = data.make_batch(0, 2, 0.5, 4000, 0.1, mix)
    heavy = data.make_batch(0, 2, 0.5, 4000, 0.1, mix, decision_weight=5.0)
    assert plain.answer.equal(plain.weights == 1.0) and heavy.answer.equal(plain.answer)
    assert (heavy.weights[heavy.answer] >= 1.0).all() and (heavy.weights[~heavy.answer] < 1.0).all()


def test_drill_batches_are_dense_short_text2json_and_leave_other_batches_alone():
    plain = [data.make_batch(0, step, 0.9, 6000, 0.1) for step in range(12)]
    drilled = [data.make_batch(0, step, 0.9, 6000, 0.1, drill=0.5) for step in range(12)]
    assert not any(b.drill for b in plain)
    kinds = [b.drill for b in drilled]
    assert any(kinds) and not all(kinds)  # about half, seeded
    for b in drilled:
        if not b.drill:
            assert data.phase(0.9)[0][0] <= b.context <= data.phase(0.9)[0][1]
            continue
        assert data.DRILL_CONTEXT[0] <= b.context <= data.DRILL_CONTEXT[1]
        for row in range(b.ids.shape[0]):
            answer = b.targets[row][b.answer[row]][:-1].tolist()
            entities = json.loads(bytes(answer).decode())  # every drill sample is Text2JSON
            assert data.DRILL_ENTITIES[0] <= len(entities) <= data.DRILL_ENTITIES[1]
    warm = data.make_batch(0, 3, None, 4000, 0.1, drill=0.99)
    assert not warm.drill  # the copy warm-up is never drilled
    early = [data.make_batch(0, step, data.DRILL_FROM - 0.01, 4000, 0.1, drill=0.99) for step in range(4)]
    assert not any(b.drill for b in early)  # nor the short-context phases before DRILL_FROM
    again = data.make_batch(0, 3, 0.9, 6000, 0.1, drill=0.5)
    assert again.ids.equal(drilled[3].ids)


def test_bad_drill_share_is_named(tmp_path):
    from vllm_kvoffload.training import train
    with pytest.raises(SystemExit, match=r"--drill 1\.5: must be in \[0, 1\)"):
        train.main(["--out", str(tmp_path), "--drill", "1.5"])
