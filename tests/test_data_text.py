"""Records, box text, templates and the tag prompt: the text LION is taught with."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lion_jax.data import boxes, records, templates
from lion_jax.data.records import BadRecord, Record, load_records, record_from_json


def test_box_text_round_trip_and_format():
  text = boxes.format_boxes([[44, 6, 65, 36.7]], width=100, height=100)
  assert text == "[0.440,0.060,0.650,0.367]"
  assert boxes.parse_boxes("Answer: " + text) == [(0.44, 0.06, 0.65, 0.367)]
  two = boxes.format_boxes([[0, 0, 50, 50], [10, 20, 200, 90]], width=200, height=100)
  assert two == "[0.000,0.000,0.250,0.500;0.050,0.200,1.000,0.900]"
  assert boxes.parse_boxes(two) == [(0.0, 0.0, 0.25, 0.5), (0.05, 0.2, 1.0, 0.9)]


def test_box_normalisation_clamps_to_unit_square():
  assert boxes.format_boxes([[-5, -1, 120, 90]], width=100, height=80) == "[0.000,0.000,1.000,1.000]"


def test_box_parser_is_tolerant_and_never_raises():
  assert boxes.parse_boxes("[ 0.1, 0.2 ,0.3,0.4 ]") == [(0.1, 0.2, 0.3, 0.4)]
  assert boxes.parse_boxes("[1,2,3,4];[5,6,7,8]") == [(1, 2, 3, 4), (5, 6, 7, 8)]
  assert boxes.parse_boxes("at [.5,0.25,1,1.] ok") == [(0.5, 0.25, 1.0, 1.0)]
  for bad in ("", "no box", "[0.1,0.2,0.3]", "[a,b,c,d]", "[0.1,0.2,0.3,0.4", "[[[,,,]]]"):
    assert boxes.parse_boxes(bad) == [] and boxes.parse_first_box(bad) is None


def test_tag_prompt_is_byte_exact_to_the_official_template():
  official = "According to <extra_id_0>, you are allowed to use or partially use the following tags: [{}]. "
  assert templates.TAG_PROMPT == official
  rec = Record(
    task_type="image_level",
    task="vqa",
    image="x.jpg",
    question="What is it?",
    answers=["dog"],
    tags=["airport", "beagle", "dog"],
  )
  text = templates.build_text(rec, np.random.default_rng(0), 10, 10)
  assert text.t5_input.startswith(official.format("airport, beagle, dog"))
  assert text.t5_input.endswith(text.instruction) and "<extra_id_0>" not in text.instruction
  assert text.target == "dog"
  untagged_record = dataclasses.replace(rec, tags=[])
  untagged = templates.build_text(untagged_record, np.random.default_rng(0), 10, 10)
  assert untagged.t5_input == untagged.instruction  # no soft prompt, no tags: a plain InstructBLIP prompt
  no_tags = templates.build_text(rec, np.random.default_rng(0), 10, 10, use_tags=False)
  assert no_tags.t5_input == no_tags.instruction


def test_a_soft_prompt_model_always_gets_the_tag_prompt_with_an_empty_list_for_no_tags():
  """The released LION never saw an input without the tag prompt: the official template renders an
  empty tag list as `[]`, and the soft prompt is trained on every example."""
  rec = Record(task_type="image_level", task="vqa", image="x.jpg", question="What is it?", answers=["dog"])
  official = "According to <extra_id_0>, you are allowed to use or partially use the following tags: []. "
  untagged = templates.build_text(rec, np.random.default_rng(0), 10, 10, soft_prompt=True)
  assert untagged.t5_input == official + untagged.instruction
  hidden = templates.build_text(dataclasses.replace(rec, tags=["dog"]), None, 10, 10, soft_prompt=True, use_tags=False)
  assert hidden.t5_input == official + hidden.instruction
  tagged = templates.build_text(dataclasses.replace(rec, tags=["dog", "ball"]), None, 10, 10, soft_prompt=True)
  assert tagged.t5_input == official.replace("[]", "[dog, ball]") + tagged.instruction


def test_targets_per_task():
  rng = np.random.default_rng(0)
  rec = Record(task_type="region_level", task="rec", image="x", expression="the red dog", boxes=[[10, 20, 60, 80]])
  text = templates.build_text(rec, rng, 100, 200)
  assert text.target == "Answer: [0.100,0.100,0.600,0.400]"
  assert "the red dog" in text.instruction and "<image>" in text.instruction
  reg = Record(
    task_type="region_level",
    task="reg",
    image="x",
    expression="the red dog",
    answers=["the red dog"],
    boxes=[[10, 20, 60, 80]],
  )
  text = templates.build_text(reg, rng, 100, 200)
  assert "[0.100,0.100,0.600,0.400]" in text.instruction and text.target == "the red dog"
  vqa = Record(
    task_type="image_level", task="vqa", image="x", question="Color?", answers=["red", "blue", "red", "blue", "blue"]
  )
  assert templates.build_text(vqa, rng, 1, 1).target == "blue"
  gc = Record(
    task_type="region_level",
    task="grounded_caption",
    image="x",
    answers=["a dog <boxes> on a mat <boxes>"],
    boxes=[[0, 0, 50, 50], [0, 50, 100, 100]],
  )
  assert (
    templates.build_text(gc, rng, 100, 100).target
    == "a dog [0.000,0.000,0.500,0.500] on a mat [0.000,0.500,1.000,1.000]"
  )


def test_template_choice_is_seeded():
  rec = Record(task_type="image_level", task="caption", image="x", answers=["a", "b", "c"])
  draws = lambda seed: [templates.build_text(rec, np.random.default_rng(seed + i), 1, 1) for i in range(20)]
  assert draws(0) == draws(0)
  assert len({t.instruction for t in draws(0)}) > 3 and len({t.target for t in draws(0)}) == 3


@pytest.mark.parametrize(
  "text,mirrored",
  [
    ("a red circle left of a blue square", "a red circle right of a blue square"),
    ("Is the circle right of the square?", "Is the circle left of the square?"),
    ("Left of the dog, RIGHT of the cat.", "Right of the dog, LEFT of the cat."),
    ("the leftmost cup and the Rightmost plate", "the rightmost cup and the Leftmost plate"),
    ("his left-hand side", "his right-hand side"),
    ("a red circle above a blue square", "a red circle above a blue square"),
    ("leftover rice, bright lights, copyright", "leftover rice, bright lights, copyright"),
  ],
)
def test_mirror_text_swaps_left_and_right_as_whole_words(text, mirrored):
  assert templates.mirror_text(text) == mirrored
  assert templates.mirror_text(mirrored) == text


def test_mirror_record_mirrors_question_expression_and_answers_only():
  rec = Record(
    task_type="image_level",
    task="vqa",
    image="x",
    question="What is left of the cup?",
    expression="the left cup",
    answers=["the right plate", "a fork"],
    tags=["left"],
    id="7",
  )
  mirrored = templates.mirror_record(rec)
  assert mirrored.question == "What is right of the cup?" and mirrored.expression == "the right cup"
  assert mirrored.answers == ["the left plate", "a fork"]
  assert mirrored.tags == ["left"] and mirrored.id == "7" and mirrored.task == "vqa"
  assert rec.question == "What is left of the cup?" and rec.answers == ["the right plate", "a fork"]


@pytest.mark.parametrize(
  "raw,reason",
  [
    ({"task_type": "pixel_level", "task": "caption", "image": "a.jpg", "answers": ["x"]}, "unknown_task_type"),
    ({"task_type": "image_level", "task": "caption", "image": "a.jpg", "answers": [" "]}, "empty_answer"),
    (
      {"task_type": "region_level", "task": "rec", "image": "a.jpg", "expression": "dog", "boxes": [[5, 5, 2, 9]]},
      "bad_box",
    ),
    (
      {
        "task_type": "region_level",
        "task": "rec",
        "image": "a.jpg",
        "expression": "dog",
        "boxes": [[5, 5, 20, 9]],
        "width": 10,
        "height": 10,
      },
      "box_outside_image",
    ),
    ({"task_type": "image_level", "task": "vqa", "image": "a.jpg", "answers": ["x"]}, "empty_question"),
    ({"task_type": "image_level", "task": "caption", "answers": ["x"]}, "no_image"),
    ({"task_type": "image_level", "task": "caption", "image": "a.jpg", "answers": ["x"], "colour": 1}, "malformed"),
    ([1, 2], "malformed"),
  ],
)
def test_invalid_records_name_their_reason(raw, reason):
  with pytest.raises(BadRecord) as e:
    record_from_json(raw)
  assert e.value.reason == reason


def test_loader_skips_and_counts_bad_lines_with_their_location(tmp_path, caplog):
  good = {"task_type": "image_level", "task": "caption", "image": "a.jpg", "answers": ["a cat"], "tags": "cat, mat"}
  lines = [json.dumps(good), "{not json", json.dumps({**good, "task_type": "?"}), "", json.dumps(good)]
  path = tmp_path / "r.jsonl"
  path.write_text("\n".join(lines))
  recs, report = load_records(path)
  assert len(recs) == 2 and recs[0].tags == ["cat", "mat"] and recs[0].source == "r"
  assert report.valid == 2 and dict(report.invalid) == {"malformed_json": 1, "unknown_task_type": 1}
  assert f"{path}:2" in caplog.text and f"{path}:3" in caplog.text
  with pytest.raises(BadRecord, match=f"{path}:2"):
    load_records(path, strict=True)
  path.write_text('{bad\n{"task": 1}\n')
  with pytest.raises(ValueError, match="no valid record"):
    load_records(path)
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    load_records(tmp_path / "missing.jsonl")


def test_official_lion_json_is_read(tmp_path):
  items = [
    {
      "image": "coco/1.jpg",
      "question": "Where is the cat? [0.1,0.2,0.3,0.4]",
      "answer": ["here", "x"],
      "category": "ref",
      "tags": ["cat"],
    },
    {"image": "coco/2.jpg", "question": "Describe.", "answer": "A cat.", "category": "norm"},
    {"image": "coco/3.jpg", "question": "Q", "answer": "", "category": "norm"},
  ]
  path = tmp_path / "lion.json"
  path.write_text(json.dumps(items))
  recs, report = load_records(path)
  assert [r.task_type for r in recs] == ["region_level", "image_level"]
  assert recs[0].answers == ["here"] and recs[0].task == "instruction" and recs[0].tags == ["cat"]
  assert dict(report.invalid) == {"empty_answer": 1}
  text = templates.build_text(recs[0], np.random.default_rng(0), 1, 1)
  assert text.instruction == items[0]["question"] and text.target == "here"


def test_record_json_round_trip(tmp_path):
  rec = Record(
    task_type="region_level",
    task="reg",
    image="a.jpg",
    expression="e",
    answers=["e"],
    boxes=[[1.0, 2.0, 3.0, 4.0]],
    tags=["t"],
    width=10,
    height=10,
    source="s",
    id="7",
  )
  path = records.write_jsonl([rec], tmp_path / "out.jsonl")
  assert load_records(path)[0] == [rec]


def test_tags_cli_merges_a_tags_file_into_records_and_names_bad_lines(tmp_path, capsys):
  from lion_jax.data import tags

  rows = [
    {"task_type": "image_level", "task": "vqa", "image": "a.jpg", "question": "Q?", "answers": ["x"], "tags": ["old"]},
    {"task_type": "image_level", "task": "caption", "image": "a.jpg", "answers": ["a cat"]},
    {"task_type": "image_level", "task": "caption", "image": "b.jpg", "answers": ["a dog"], "tags": "kept"},
    {"task_type": "image_level", "task": "caption", "image": "c.jpg", "answers": ["a bird"]},
    {"task_type": "image_level", "task": "caption", "image": "d.jpg", "answers": []},  # invalid: no answer
  ]
  (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "tags.jsonl").write_text(
    json.dumps({"image": "a.jpg", "tags": ["cat", "sofa"]})
    + "\n"
    + json.dumps({"image": "z.jpg", "tags": "x, y"})
    + "\n"
  )
  argv = ["--records", str(tmp_path / "records.jsonl"), "--tags", str(tmp_path / "tags.jsonl")]
  assert tags.main([*argv, "--out", str(tmp_path / "out" / "merged.jsonl")]) == 0
  merged, _ = load_records(tmp_path / "out" / "merged.jsonl")
  assert [r.tags for r in merged] == [["cat", "sofa"], ["cat", "sofa"], ["kept"], []]
  assert capsys.readouterr().out.strip() == (
    f"wrote {tmp_path / 'out' / 'merged.jsonl'}: 4 records, 2 given tags from {tmp_path / 'tags.jsonl'}, "
    "1 still without tags, 1 invalid records skipped {'empty_answer': 1}, "
    f"1 images of {tmp_path / 'tags.jsonl'} named by no record"
  )
  (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.jpg", "tags": ["cat"]}) + "\n" + '{"image": "a.jpg"}\n')
  assert tags.main(["--records", argv[1], "--tags", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "x")]) == 1
  assert capsys.readouterr().err.startswith(f'error: {tmp_path / "bad.jsonl"}:2: expected {{"image"')
  (tmp_path / "twice.jsonl").write_text(
    json.dumps({"image": "a.jpg", "tags": []}) + "\n\n" + json.dumps({"image": "a.jpg", "tags": []})
  )
  assert tags.main(["--records", argv[1], "--tags", str(tmp_path / "twice.jsonl"), "--out", str(tmp_path / "x")]) == 1
  assert "twice.jsonl:3: image 'a.jpg' is listed twice" in capsys.readouterr().err


def test_a_benchmark_prompt_replaces_the_task_templates_and_names_a_field_the_task_lacks():
  vqa = Record(task_type="image_level", task="vqa", image="x.jpg", question=" Why? ", answers=["because"])
  asked = templates.build_text(vqa, None, 1, 1, prompt="Question: {question} Short answer:")
  assert (asked.instruction, asked.target) == ("Question: Why? Short answer:", "because")
  rec = Record(task_type="region_level", task="rec", image="x.jpg", expression="the dog", boxes=[[0, 0, 5, 5]])
  assert templates.build_text(rec, None, 10, 10, prompt="Find {expr}.").instruction == "Find the dog."
  caption = Record(task_type="image_level", task="caption", image="x.jpg", answers=["a cat"])
  assert (
    templates.build_text(caption, None, 1, 1, prompt="A short image caption.").instruction == "A short image caption."
  )
  with pytest.raises(records.UserError, match=r"prompt 'Describe \{question\}': caption records fill no fields"):
    templates.build_text(caption, None, 1, 1, prompt="Describe {question}")
  with pytest.raises(records.UserError, match=r"vqa records fill \{question\}, not \['q'\]"):
    templates.build_text(vqa, None, 1, 1, prompt="{q}")


def test_every_benchmark_is_asked_with_its_sources_prompt_and_generation_lengths():
  from lion_jax.evaluation import benchmarks

  okvqa = benchmarks.eval_config("okvqa")
  assert okvqa.prompt == "Question: {question} Short Answer:"  # LAVIS instructblip/qa_okvqa_flant5xl_eval.yaml
  assert (okvqa.max_new_tokens, okvqa.min_length, okvqa.length_penalty, okvqa.num_beams) == (10, 1, -1.0, 5)
  coco = benchmarks.eval_config("coco_caption")
  assert (coco.prompt, coco.max_new_tokens, coco.min_length) == ("A short image caption.", 80, 10)
  refcoco = benchmarks.eval_config("refcoco_val")
  assert refcoco.prompt == templates.REC_TEMPLATES[0]  # LION's notebook
  assert refcoco.tasks == ("rec",)  # the RefCOCO adapters write REG records next to the REC ones
  assert benchmarks.eval_config("gqa", prompt="{question}").prompt == "{question}"
  from lion_jax.evaluation import mmbench, visdial

  task_of_kind = {"caption": "caption", "vqa": "vqa", "exact_match": "vqa", "pope": "vqa", "rec": "rec"}
  own_checks = {"mmbench": mmbench.check_prompt, "visdial": visdial.check_prompt}
  for name, benchmark in benchmarks.BENCHMARKS.items():
    assert benchmark.prompt.source, name
    if benchmark.kind in own_checks:
      own_checks[benchmark.kind](benchmark.prompt.text)
    elif benchmark.prompt.text:  # each prompt fills only what its records have
      templates._fill(benchmark.prompt.text, task_of_kind[benchmark.kind])
