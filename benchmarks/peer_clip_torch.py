r"""The PyTorch peer of a CLIP config's train step: `transformers.CLIPModel` at the same sizes.

  python benchmarks/peer_clip_torch.py [--config=clip.py:tiny] [--steps=30] [--compile]

A user comparing us with PyTorch would build CLIP from `transformers`, so the peer is that:
a `CLIPModel` with the config's tower widths, depths, heads, MLP widths, patch size, image
size, text length, vocabulary and joint width, trained with symmetric InfoNCE and AdamW
(the config's betas, eps and weight decay) in float32 on synthetic inputs, eager or under
`torch.compile`. It differs from ours only where transformers' CLIP is fixed: the image
tower pools a [CLS] token (one token more than our `gap` pool) between a pre- and a
post-LayerNorm, and the loss has no duplicate-aware positives (ours: catalog positives, a
negligible [B,B] mask). torch is a benchmark extra (`pip install -e .[dev]`), never a
runtime dependency; benchmarks/train_step.py alternates this peer with our step in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from eclip_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from eclip_jax.models import text as text_lib  # noqa: E402
from eclip_jax.models import vit  # noqa: E402

# Our GELU forms by the names transformers gives them.
_ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}


def clip_config(config) -> transformers.CLIPConfig:
  """The transformers CLIPConfig with our two-tower config's sizes."""
  image, text = config.model.image, config.model.text
  vision_size, patch = vit.ViT(**image, parent=None).shape()  # with any size overrides
  text_size = text_lib.TextTransformer(**text, parent=None).size()
  activation = _ACTIVATIONS[image.get("activation", "gelu_tanh")]
  eps = image.get("norm_eps", 1e-6)
  return transformers.CLIPConfig(
      vision_config=dict(hidden_size=vision_size.width, num_hidden_layers=vision_size.depth,
                         num_attention_heads=vision_size.num_heads,
                         intermediate_size=vision_size.mlp_dim, patch_size=patch,
                         image_size=config.input.image_size, hidden_act=activation,
                         layer_norm_eps=eps),
      text_config=dict(hidden_size=text_size.width, num_hidden_layers=text_size.depth,
                       num_attention_heads=text_size.num_heads,
                       intermediate_size=text_size.mlp_dim, vocab_size=text.vocab_size,
                       max_position_embeddings=text.max_len, hidden_act=activation,
                       layer_norm_eps=eps, eos_token_id=tokenizer_lib.EOS_ID,
                       bos_token_id=tokenizer_lib.BOS_ID, pad_token_id=tokenizer_lib.PAD_ID),
      projection_dim=config.model.embed_dim,
  )


def num_params(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def make_step(config, *, compile: bool = False, seed: int = 0
              ) -> tuple[Callable[[], float], torch.nn.Module]:
  """(step, model): `step()` runs one train step on a fixed synthetic batch of the config's
  shapes (forward, symmetric InfoNCE, backward, AdamW) and returns the loss."""
  torch.manual_seed(seed)
  model = transformers.CLIPModel(clip_config(config)).train()
  optim = config.optim
  optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=(optim.b1, optim.b2),
                                eps=optim.eps, weight_decay=optim.weight_decay)
  b, size = config.input.batch_size, config.input.image_size
  length = config.input.max_text_len
  pixels = torch.randn(b, 3, size, size)
  tokens = torch.randint(4, config.input.vocab_size, (b, length))
  tokens[:, -1] = tokenizer_lib.EOS_ID  # CLIP pools at the first EOS
  labels = torch.arange(b)

  def loss_fn(pixels, tokens):
    out = model(input_ids=tokens, pixel_values=pixels, return_loss=False)
    logits = out.logits_per_image  # already scaled by exp(logit_scale)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                  + torch.nn.functional.cross_entropy(logits.T, labels))

  forward = torch.compile(loss_fn) if compile else loss_fn

  def step() -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = forward(pixels, tokens)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
    optimizer.step()
    return float(loss.detach())

  return step, model


def time_steps(step: Callable[[], float], steps: int) -> list[float]:
  """Seconds of each of `steps` calls of `step`."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="clip.py:tiny")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--compile", action="store_true")
  args = parser.parse_args()
  import train_step  # noqa: E402  (this folder's; loads configs the way our bench does)

  torch.set_num_threads(os.cpu_count() or 1)
  config = train_step.load_config(args.config)
  step, model = make_step(config, compile=args.compile)
  start = time.perf_counter()
  step()
  warmup = time.perf_counter() - start
  seconds = statistics.median(time_steps(step, args.steps))
  print(f"python benchmarks/peer_clip_torch.py --config={args.config} --steps={args.steps}"
        f"{' --compile' if args.compile else ''}\n")
  print(f"{num_params(model):,} parameters; first step {warmup:.1f} s; "
        f"{1e3 * seconds:.1f} ms/step, {config.input.batch_size / seconds:.0f} examples/s")


if __name__ == "__main__":
  main()
