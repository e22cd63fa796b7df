"""The stage config files and the checks that run before anything is built: each configs/stageN.py
holds its own stage, XL/XXL refuse random towers unless asked, unset sources are listed at once, and
a bad config argument is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from configs import stage1, stage2, stage3
from lion_jax import run_config, train
from lion_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
  "module, name, layout, init_from, mixture",
  [
    (stage1, "stage1", "qformer", [], run_config.image_level_mixture()),
    (stage2, "stage2", "aggregator", ["stage1"], run_config.region_level_mixture()),
    (stage3, "stage3", "all", ["stage1", "stage2"], run_config.both_levels_mixture()),
  ],
)
def test_each_stage_file_holds_its_own_stage(module, name, layout, init_from, mixture):
  config = module.get_config("size=xxl,steps=7")
  assert list(config.stages) == [name] and config.run_stages == name
  stage = config.stages[name]
  assert (stage.visual_input, list(stage.init_from), dict(stage.mixture), stage.num_steps) == (
    layout,
    init_from,
    mixture,
    7,
  )
  assert stage.export == (name == "stage3")
  assert config.model.t5.d_model == 4096 and config.require_pretrained  # xxl = FlanT5-XXL


def test_xl_refuses_random_towers_unless_asked(tmp_path):
  config = stage1.get_config()
  with pytest.raises(
    UserError,
    match=r"stage1 would start a 24-layer T5 and its ViT from random weights: "
    r"set --config.pretrained=CONVERTED_DIR .* or --config.pretrained=random",
  ):
    train.run(config, tmp_path)
  config.pretrained = "random"  # on purpose: gets as far as the data, which is not set
  with pytest.raises(UserError, match="sources without records"):
    train.run(config, tmp_path)


def test_a_mixture_without_records_names_every_such_source(tmp_path):
  config = stage1.get_config()
  config.pretrained = "random"
  config.data.sources.coco_caption.update(records=str(tmp_path / "coco.jsonl"), image_root=str(tmp_path))
  with pytest.raises(UserError) as error:
    train.run(config, tmp_path)
  message = str(error.value)
  assert "stages.stage1.mixture names sources without records: aokvqa, okvqa, textcaps, vqav2." in message
  assert "--config.stages.stage1.mixture.<name>=0" in message and "coco_caption" not in message


@pytest.mark.parametrize(
  "argument, message",
  [
    ("size=xxxl", "error: size='xxxl'; expected one of ['tiny', 'xl', 'xxl']"),
    ("sizes=xl", "error: unknown config argument 'sizes'; expected one of ['size', 'steps']"),
  ],
)
def test_a_bad_config_argument_is_one_line(argument, message, tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "lion_jax.main", f"--config=configs/stage1.py:{argument}", f"--workdir={tmp_path}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == message, result.stderr
  assert "Traceback" not in result.stderr
