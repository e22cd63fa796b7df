"""Tagging throughput of the RAM tagger (Swin-L at 384 px), lion-jax vs HF transformers' `SwinModel`.

  python -m benchmarks.ram_tagging [--batch 4] [--repeats 3]

Random weights of the released dims (`presets.ram_swin_large()`, 4585 classes), fp32. HF `SwinModel`
is the same backbone with the same weights, run in the same process (it has no tagging head, so it
is timed on the backbone alone; lion-jax is timed both on the backbone and on the whole tagger,
Swin + head + sigmoid). Warmed up, median of --repeats; images/s = batch / seconds. Also checks the
backbones' outputs agree (max relative error).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import median_seconds, record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import flax.linen as nn
  import jax
  import torch
  import transformers

  from lion_jax.convert import mapping
  from lion_jax.models import presets
  from lion_jax.models.ram import RamTaggingModel
  from lion_jax.models.swin import SwinTransformer
  from tests.reference import hf_swin_as_ram_keys, max_relative_error, state_dict_numpy

  config = presets.ram_swin_large()
  s = config.swin
  hf_config = transformers.SwinConfig(
    image_size=s.image_size,
    patch_size=s.patch_size,
    embed_dim=s.embed_dim,
    depths=list(s.depths),
    num_heads=list(s.num_heads),
    window_size=s.window,
    layer_norm_eps=s.ln_eps,
    drop_path_rate=0.0,
  )
  torch.manual_seed(0)
  hf = transformers.SwinModel(hf_config).eval()
  image = np.random.default_rng(0).normal(size=(args.batch, s.image_size, s.image_size, 3)).astype(np.float32)
  pixel_values = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())

  model = RamTaggingModel(config)
  params = jax.jit(lambda key: nn.unbox(model.init(key, image[:1])["params"]))(jax.random.key(0))
  entries = [mapping.Entry(e.dst[len("swin/") :], e.src, e.transform) for e in mapping.ram_tagger(config)]
  swin_shapes = mapping.flat_shapes(jax.eval_shape(lambda: params["swin"]))
  swin = mapping.unflatten(
    mapping.assemble(
      [e for e in entries if e.dst in swin_shapes],
      hf_swin_as_ram_keys(state_dict_numpy(hf)),
      swin_shapes,
      source_name="HF SwinModel",
      ignore=mapping.RAM_UNUSED,
    )
  )
  params = {**params, "swin": swin}

  backbone = jax.jit(lambda p, x: SwinTransformer(s).apply({"params": p}, x))
  tagger = jax.jit(lambda p, x: jax.nn.sigmoid(model.apply({"params": p}, x)))

  def run_hf():
    with torch.no_grad():
      out = hf(pixel_values)
      return torch.cat([out.pooler_output[:, None], out.last_hidden_state], 1).numpy()

  run_backbone = lambda: np.asarray(jax.block_until_ready(backbone(swin, image)))
  run_tagger = lambda: np.asarray(jax.block_until_ready(tagger(params, image)))
  error = max_relative_error(run_backbone(), run_hf())
  hf_s, hf_all = median_seconds(run_hf, args.repeats)
  backbone_s, backbone_all = median_seconds(run_backbone, args.repeats)
  tagger_s, tagger_all = median_seconds(run_tagger, args.repeats)
  b = args.batch
  record(
    "ram_tagging",
    {
      "batch": b,
      "image_size": s.image_size,
      "classes": config.num_classes,
      "backbone_max_rel_error": float(f"{error:.2e}"),
      "hf_swin_images_per_s": round(b / hf_s, 2),
      "jax_swin_images_per_s": round(b / backbone_s, 2),
      "jax_tagger_images_per_s": round(b / tagger_s, 2),
      "swin_speedup": round(hf_s / backbone_s, 2),
      "hf_swin_runs": [round(t, 3) for t in hf_all],
      "jax_swin_runs": [round(t, 3) for t in backbone_all],
      "jax_tagger_runs": [round(t, 3) for t in tagger_all],
      "torch_threads": torch.get_num_threads(),
    },
  )


if __name__ == "__main__":
  main()
