"""lion_jax.plot on fake metrics.jsonl files: no training needed."""

import json

from PIL import Image

from lion_jax import plot


def write_metrics(stage_dir, rows):
  stage_dir.mkdir(parents=True)
  (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def fake_run(workdir):
  """pretrain (10 steps), stage1 (20, resumed at step 10: steps 10 and 20 logged twice), stage2 (5)."""
  write_metrics(workdir / "pretrain", [{"step": s, "loss": 5.0 - 0.1 * s, "learning_rate": 1e-4} for s in (1, 5, 10)])
  write_metrics(
    workdir / "stage1",
    [
      {"step": 10, "loss": 9.0, "loss_image_level": 9.0},
      {"step": 10, "loss": 3.0, "loss_image_level": 3.0},  # the resumed run's row wins
      {
        "step": 10,
        "eval/synthetic_caption/CIDEr": 0.2,
        "eval/synthetic_caption/seconds": 1.5,
        "eval/image_level/loss": 3.2,
      },
      {"step": 20, "loss": 2.5, "loss_image_level": 2.5},
      {"step": 20, "eval/synthetic_caption/CIDEr": 0.4, "eval/synthetic_vqa/accuracy": 0.3},
    ],
  )
  write_metrics(
    workdir / "stage2",
    [
      {"step": 5, "loss": 2.0, "loss_image_level": 1.5, "loss_region_level": 2.5},
      {"step": 5, "eval/synthetic_rec/accuracy": 0.1, "eval/region_level/loss": 2.4},
    ],
  )
  (workdir / "config.json").write_text(json.dumps({"run_stages": "pretrain, stage1,stage2", "seed": 0}))


def test_read_metrics_keeps_last_row_of_a_repeated_step(tmp_path):
  fake_run(tmp_path)
  metrics = plot.read_metrics(tmp_path / "stage1")
  assert metrics["loss"] == [(10, 3.0), (20, 2.5)]
  assert metrics["eval/synthetic_caption/CIDEr"] == [(10, 0.2), (20, 0.4)]
  assert metrics["eval/synthetic_vqa/accuracy"] == [(20, 0.3)]


def test_read_metrics_skips_a_line_cut_short(tmp_path):
  write_metrics(tmp_path / "stage1", [{"step": 1, "loss": 1.0}])
  with open(tmp_path / "stage1" / "metrics.jsonl", "a") as f:
    f.write('{"step": 2, "lo' + json.dumps({"step": 2, "loss": 0.5}) + "\n" + json.dumps({"step": 3, "loss": 0.2}))
  assert plot.read_metrics(tmp_path / "stage1") == {"loss": [(1, 1.0), (3, 0.2)]}


def test_stage_order_follows_config_run_stages(tmp_path):
  for name in ("a_stage", "b_stage"):
    write_metrics(tmp_path / name, [{"step": 1, "loss": 1.0}])
  (tmp_path / "no_metrics").mkdir()
  assert plot.stage_order(tmp_path) == ["a_stage", "b_stage"]
  (tmp_path / "config.json").write_text(json.dumps({"run_stages": "b_stage,a_stage"}))
  assert plot.stage_order(tmp_path) == ["b_stage", "a_stage"]


def test_stage_offsets():
  assert plot.stage_offsets([10, 20, 5]) == [0, 10, 30]
  assert plot.stage_offsets([7]) == [0]
  assert plot.stage_offsets([]) == []


def test_panels_group_losses_and_one_panel_per_eval_metric():
  keys = [
    "learning_rate",
    "loss_region_level",
    "loss",
    "eval/image_level/loss",
    "eval/synthetic_vqa/accuracy",
    "eval/synthetic_vqa/seconds",
    "eval/synthetic_caption/CIDEr",
    "eval/synthetic_caption/CIDEr_blind",
    "eval/validation/region_level/image_gain",
    "eval/lonely/score_blind",
  ]
  assert plot.panels(keys) == [
    ("training loss", ["loss", "loss_region_level", "eval/image_level/loss"]),
    ("lonely score_blind", ["eval/lonely/score_blind"]),
    ("synthetic_caption CIDEr", ["eval/synthetic_caption/CIDEr", "eval/synthetic_caption/CIDEr_blind"]),
    ("synthetic_vqa accuracy", ["eval/synthetic_vqa/accuracy"]),
    ("validation region_level/image_gain", ["eval/validation/region_level/image_gain"]),
  ]
  assert plot.panels(["learning_rate", "eval/x/seconds"]) == []


def test_plot_run_writes_a_png(tmp_path):
  fake_run(tmp_path)
  path = plot.plot_run(tmp_path)
  assert path == tmp_path / "curves.png"
  assert path.stat().st_size > 10_000
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == (1000, 4 * 260)  # 10 x 2.6 in per panel at 100 dpi: loss + CIDEr, vqa, rec accuracy


def test_main_writes_to_out(tmp_path, capsys):
  fake_run(tmp_path / "run")
  out = tmp_path / "figs" / "run.png"
  assert plot.main([str(tmp_path / "run"), "--out", str(out)]) == 0
  assert capsys.readouterr().out == f"wrote {out}\n"
  assert out.exists() and not (tmp_path / "run" / "curves.png").exists()


def test_main_reports_a_workdir_without_metrics(tmp_path, capsys):
  (tmp_path / "stage1").mkdir()
  assert plot.main([str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and str(tmp_path) in err and err.count("\n") == 1
