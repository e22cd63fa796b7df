"""The command lines as users run them: the adapter CLI end to end, flag spellings, help texts, user errors.

Every test runs a real CLI, in process through its `main(argv)` or as `python -m ...`, on files written
here; the absl CLIs (plan, evaluate) define clashing flags, so they only run as subprocesses.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lion_jax import plot, predict
from lion_jax.convert import __main__ as convert_cli
from lion_jax.data import adapters, synthetic
from lion_jax.data import inspect as inspect_cli
from lion_jax.data import tags as tags_cli
from lion_jax.data.records import load_records
from lion_jax.models import summary
from lion_jax.serve import __main__ as serve_cli

REPO = Path(__file__).resolve().parents[1]
ARGPARSE_CLIS = {
  "adapters": adapters.main,
  "inspect": inspect_cli.main,
  "synthetic": synthetic.main,
  "plot": plot.main,
  "convert": convert_cli.main,
  "summary": summary.main,
  "predict": predict.main,
  "tags": tags_cli.main,
  "serve": serve_cli.main,
}


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "COLUMNS": "80"}
  env.pop("XLA_FLAGS", None)  # the planner sets its own device count
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )


def write_json(path: Path, data) -> Path:
  path.write_text(json.dumps(data), encoding="utf-8")
  return path


def karpathy_file(tmp_path: Path) -> Path:
  """Two test images, one with only an empty caption (skipped: empty_answer), and one train image."""
  image = lambda cocoid, split, *captions: {
    "filepath": "val2014",
    "filename": f"COCO_val2014_{cocoid:012d}.jpg",
    "split": split,
    "cocoid": cocoid,
    "sentences": [{"raw": c} for c in captions],
  }
  return write_json(
    tmp_path / "dataset_coco.json",
    {"images": [image(1, "test", "A cat on a mat."), image(2, "test", "  "), image(3, "train", "A dog.")]},
  )


def vqa_files(tmp_path: Path) -> tuple[Path, Path]:
  """OK-VQA style (no data_subtype): two questions, one without annotation (skipped: no_annotation)."""
  questions = write_json(
    tmp_path / "questions.json",
    {
      "questions": [
        {"image_id": 7, "question": "What is it?", "question_id": 70},
        {"image_id": 8, "question": "Why?", "question_id": 80},
      ]
    },
  )
  annotations = write_json(
    tmp_path / "annotations.json",
    {"annotations": [{"question_id": 70, "answers": [{"answer": "a cat"}, {"answer": "cat"}]}]},
  )
  return questions, annotations


# --- the adapter command line ------------------------------------------------------------------------------


def test_adapters_help_lists_every_adapter_on_one_line():
  result = run_module("lion_jax.data.adapters", "--help")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  for name, adapter in adapters.ADAPTERS.items():
    summary_line = adapter.__doc__.strip().splitlines()[0]
    assert any(re.fullmatch(rf"  {name} +{re.escape(summary_line)}", line) for line in lines), (name, lines)


def test_coco_karpathy_as_python_m(tmp_path):
  out = tmp_path / "coco_test.jsonl"
  result = run_module(
    "lion_jax.data.adapters", "coco_karpathy", f"--path={karpathy_file(tmp_path)}", "--split=test", f"--out={out}"
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1] == f"wrote {out}: kept 1 records, skipped 1 (empty_answer: 1)"
  assert result.stderr == ""  # the adapter's own summary line is not repeated
  records, _ = load_records(out)
  assert [(r.image, r.answers) for r in records] == [("val2014/COCO_val2014_000000000001.jpg", ["A cat on a mat."])]


def test_vqa_v2_for_okvqa(tmp_path, capsys):
  questions, annotations = vqa_files(tmp_path)
  out = tmp_path / "okvqa" / "val.jsonl"
  assert (
    adapters.main(
      [
        "vqa_v2",
        f"--questions_path={questions}",
        f"--annotations_path={annotations}",
        "--image_dir=val2014",
        "--source=okvqa",
        f"--out={out}",
      ]
    )
    == 0
  )
  assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}: kept 1 records, skipped 1 (no_annotation: 1)"
  records, _ = load_records(out)
  assert [(r.image, r.source, r.answers) for r in records] == [
    ("val2014/COCO_val2014_000000000007.jpg", "okvqa", ["a cat", "cat"])
  ]


def test_adapter_flags_are_the_signatures():
  subcommands = next(a for a in adapters.command_line_parser()._actions if isinstance(a, argparse._SubParsersAction))
  assert set(subcommands.choices) == set(adapters.ADAPTERS)
  for name, adapter in adapters.ADAPTERS.items():
    flags = {a.dest: a for a in subcommands.choices[name]._actions if a.dest != "help"}
    parameters = inspect.signature(adapter).parameters
    assert set(flags) == {*parameters, "out"}
    for param in parameters.values():
      assert flags[param.name].required == (param.default is param.empty), (name, param.name)


def test_the_documented_adapter_commands_parse():
  text = "\n".join((REPO / doc).read_text(encoding="utf-8") for doc in ("README.md", "docs/data.md"))
  commands = re.findall(r"^python -m lion_jax\.data\.adapters (\w.*?)(?<!\\)$", text, re.MULTILINE | re.DOTALL)
  parser = adapters.command_line_parser()
  assert {shlex.split(c)[0] for c in commands} == set(adapters.ADAPTERS)  # one real command per adapter
  for command in commands:
    parser.parse_args(shlex.split(command.replace("\\\n", " ")))


# --- flag spellings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "flag, values, message",
  [
    ("num_images", ["0"], "num_images must be >= 1, got 0"),
    ("image_size", ["16"], "image_size must be >= 32"),
    ("val_fraction", ["1.0"], "val_fraction must be in [0, 1), got 1.0"),
    ("max_shapes", ["0"], "max_shapes must be in [1, "),
    ("size_range", ["0.5", "0.2"], "size_range must satisfy 0 < low <= high < 1, got (0.5, 0.2)"),
  ],
)
@pytest.mark.parametrize("spelling", ["underscore", "hyphen"])
def test_synthetic_flags_in_both_spellings(tmp_path, capsys, flag, values, message, spelling):
  """Each flag reaches `generate` under both names: its value is the one the error names."""
  name = flag if spelling == "underscore" else flag.replace("_", "-")
  assert synthetic.main(["--out", str(tmp_path), f"--{name}", *values]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_inspect_flags_in_both_spellings(tmp_path, capsys):
  dataset = tmp_path / "data"
  synthetic.generate(dataset, num_images=4, image_size=32, val_fraction=0.5)
  outputs = []
  for dash in ("_", "-"):
    argv = [
      "--records",
      str(dataset / "val.jsonl"),
      f"--image{dash}root",
      str(dataset),
      "--json",
      f"--t5{dash}vocab",
      str(dataset / "spiece.model"),
      f"--bert{dash}vocab",
      str(dataset / "bert_vocab.txt"),
      f"--max{dash}target{dash}len",
      "1",
      f"--max{dash}input{dash}len",
      "1000",
      f"--max{dash}qformer{dash}len",
      "1000",
    ]
    assert inspect_cli.main(argv) == 0
    outputs.append(json.loads(capsys.readouterr().out))
  assert outputs[0] == outputs[1]
  valid = outputs[0]["valid"]
  assert valid > 0 and outputs[0]["truncated"] == {"input": 0, "target": valid, "qformer": 0}


# --- help texts --------------------------------------------------------------------------------------------


def parsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
  """The parser and its subcommands' parsers."""
  subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
  return [parser, *[sub for action in subcommands for sub in action.choices.values()]]


@pytest.mark.parametrize("cli", sorted(ARGPARSE_CLIS))
def test_every_flag_has_help_and_a_shown_default(cli, monkeypatch, capsys):
  built = []
  parse_args = argparse.ArgumentParser.parse_args
  monkeypatch.setattr(
    argparse.ArgumentParser,
    "parse_args",
    lambda self, *args, **kwargs: built.append(self) or parse_args(self, *args, **kwargs),
  )
  with pytest.raises(SystemExit) as exit_info:
    ARGPARSE_CLIS[cli](["--help"])
  assert exit_info.value.code == 0 and "usage: python -m lion_jax." in capsys.readouterr().out
  for parser in parsers_of(built[0]):
    parser.format_help()  # every help text formats (a stray % would raise here)
    for action in parser._actions:
      if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
        continue
      where = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
      assert action.help, f"{where} has no help text"
      if action.option_strings:
        assert any("-" not in o[2:] for o in action.option_strings), f"{where} has no underscore spelling"
        assert action.required or "(default: " in action.help, f"{where} shows no default"


@pytest.mark.parametrize("module", ["lion_jax.plan", "lion_jax.evaluate"])
def test_absl_flags_have_help(module):
  result = run_module(module, "--help")  # absl exits 1 after printing the help
  own = result.stdout.split(f"{module.replace('.', '/')}.py:\n", 1)[1].split("\n\n", 1)[0]
  flags = re.findall(r"^  --(\w+): ?(.*)$", own, re.MULTILINE)
  assert len(flags) >= 3 and all(text.strip() for _, text in flags), flags


# --- user errors -------------------------------------------------------------------------------------------

BROKEN_JSON = '{"images": ['
USER_ERRORS = {  # name -> (cli, argv for a tmp_path, what the one error line says)
  "adapter input missing": (
    "adapters",
    lambda tmp: ["coco_karpathy", f"--path={tmp}/missing", "--out=x.jsonl"],
    "--path: no such file: ",
  ),
  "adapter input not JSON": (
    "adapters",
    lambda tmp: ["aokvqa", f"--path={tmp}/broken.json", "--out=x.jsonl"],
    "broken.json: not valid JSON",
  ),
  "adapter keeps nothing": (
    "adapters",
    lambda tmp: ["coco_karpathy", f"--path={karpathy_file(tmp)}", "--split=val", "--out=x.jsonl"],
    "produced no valid record",
  ),
  "records missing": (
    "inspect",
    lambda tmp: ["--records", f"{tmp}/missing", "--image_root", str(tmp)],
    "--records: no such file",
  ),
  "workdir missing": ("plot", lambda tmp: [f"{tmp}/missing"], "no such folder: "),
  "HF dir missing": (
    "convert",
    lambda tmp: ["instructblip", "--hf_dir", f"{tmp}/missing", "--out", f"{tmp}/out"],
    "--hf_dir: no such folder",
  ),
  "checkpoint missing": (
    "predict",
    lambda tmp: ["--checkpoint", f"{tmp}/missing", "--image", "x.png", "--question", "?"],
    "--checkpoint: no such folder",
  ),
  "bad freezing rule": ("summary", lambda tmp: ["--preset", "tiny", "--frozen", "["], "not a valid regular expression"),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_a_user_error_is_one_line_and_exit_status_1(tmp_path, monkeypatch, capsys, case):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "broken.json").write_text(BROKEN_JSON, encoding="utf-8")
  cli, argv, message = USER_ERRORS[case]
  assert ARGPARSE_CLIS[cli](argv(tmp_path)) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
  "module, argv, message",
  [
    ("lion_jax.data.adapters", ["textcaps", "--path=missing.json", "--out=x.jsonl"], "--path: no such file"),
    ("lion_jax.plan", ["--config=configs/demo.py:size=tiny", "--stage=stage9"], "--stage='stage9'"),
  ],
)
def test_a_user_error_in_a_process_has_no_traceback(module, argv, message):
  result = run_module(module, *argv)
  assert result.returncode == 1 and result.stderr.startswith("error: ") and message in result.stderr
  assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_summary_table_lists_every_parameter(capsys):
  """--table: clu's overview of every parameter path, whose sizes add up to the counted total."""
  from lion_jax.convert.mapping import flat_shapes
  from lion_jax.models import presets
  from lion_jax.models.lion import abstract_params

  assert summary.main(["--preset", "tiny", "--table"]) == 0
  out = capsys.readouterr().out
  shapes = flat_shapes(abstract_params(presets.get("tiny")))
  rows = {
    line.split("|")[1].strip(): line.split("|")[2].strip()
    for line in out.splitlines()
    if line.startswith("| ") and not line.startswith("| Name")
  }
  assert rows == {path: str(tuple(shape)) for path, shape in shapes.items()}
  total = sum(int(np.prod(s)) for s in shapes.values())
  assert f"Total: {total:,}" in out and re.search(rf"^\s+total\s+{total:,}\s", out, re.M)
