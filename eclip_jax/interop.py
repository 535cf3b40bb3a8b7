r"""Weights in and out: OpenAI/HF CLIP towers as this codebase's params; params as safetensors.

Import. A CLIP checkpoint in the `transformers` layout (`CLIPModel.state_dict()`, or the
`model.safetensors` of HF's openai/clip-vit-base-patch32, -base-patch16, -large-patch14, ...)
becomes the params of a two-tower model (and so of ECLIP, which has the same towers):

    vision_model.*        -> image_tower/*      visual_projection -> image_proj
    text_model.*          -> text_tower/*       text_projection   -> text_proj
    logit_scale           -> logit_scale

For the result to compute what CLIP computes, the towers must be laid out as CLIP's:
`pool="cls"`, `pre_norm=True`, `activation="quick_gelu"` (or `"gelu"` for checkpoints whose
config says so), `norm_eps=1e-5`, CLIP's sizes and `model.text.vocab_size=49408`
(`configs/common.py:use_clip_layout` sets these). Two of CLIP's differences need no field:

* CLIP's pixel normalization ((p/255 - mean) / std per channel) is folded into the patch
  embedding's kernel and bias, so the imported tower reads this codebase's images (values in
  `input.value_range`) and embeds an image as CLIP does after its own preprocessing of the
  same pixels (resizing aside);
* CLIP's [CLS] position embedding is added to the [CLS] token, a constant either way.

CLIP's text tower reads ids of CLIP's BPE vocabulary, which this codebase does not ship: its
tokenizers are SentencePiece models trained per dataset. Importing the text tower maps the
weights exactly, but it is only meaningful with CLIP's own tokenization.

Export: `save_safetensors` writes params under their "/"-joined paths
(`image_tower/encoder/block_0/attn/query/kernel`), the names `config.init_params` matches;
`read_params` reads such a file back, into either the scanned or the unscanned layout.

Files are read without pickle: `.safetensors` directly, a PyTorch `.bin`/`.pt` state dict
only with `torch.load(weights_only=True)` (torch is then needed; it is not a dependency).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath
from safetensors import numpy as safetensors_np

from eclip_jax import optim

# CLIP's preprocessing: per-channel mean and std of pixels scaled to [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_VOCAB_SIZE = 49408
CLIP_NORM_EPS = 1e-5
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_FILE_SUFFIXES = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)

_CLIP_PREFIXES = ("vision_model.", "text_model.")


def is_weight_file(path: str | epath.Path) -> bool:
  """Whether `path` names a weights file (rather than an Orbax checkpoint directory)."""
  return str(path).endswith(WEIGHT_FILE_SUFFIXES)


# --------------------------------------------------------------------------------------------
# Reading and writing files.
# --------------------------------------------------------------------------------------------
def read_state_dict(path: str | epath.Path) -> dict[str, np.ndarray]:
  """A flat `name -> array` dict from a `.safetensors` file or a PyTorch state dict file."""
  path = epath.Path(path)
  if str(path).endswith(SAFETENSORS_SUFFIX):
    # (numpy reads bfloat16 through ml_dtypes, which importing jax registers.)
    return safetensors_np.load(path.read_bytes())
  if str(path).endswith(TORCH_SUFFIXES):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as error:
      raise ImportError(f"reading {path} needs PyTorch (`pip install torch`); or convert it to "
                        ".safetensors, which needs nothing") from error
    with path.open("rb") as f:
      state_dict = torch.load(f, map_location="cpu", weights_only=True)
    return state_dict_to_numpy(state_dict)
  raise ValueError(f"{path} is not a weights file; expected one of {WEIGHT_FILE_SUFFIXES}")


def state_dict_to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """torch tensors (any dtype, bfloat16 included) or arrays -> numpy arrays."""
  converted = {}
  for name, value in state_dict.items():
    if hasattr(value, "detach"):  # a torch tensor; numpy has no torch.bfloat16
      value = value.detach().cpu()
      value = value.float() if value.dtype.is_floating_point else value
      value = value.numpy()
    converted[name] = np.asarray(value)
  return converted


def flatten(params: Mapping[str, Any]) -> dict[str, Any]:
  """Nested params -> `{"a/b/c": leaf}` (the paths `config.init_params` matches)."""
  return {optim.param_path(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(dict(params))}


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def save_safetensors(path: str | epath.Path, params: Mapping[str, Any]) -> None:
  """Params (host or fully addressable device arrays) as one safetensors file."""
  # (Not np.ascontiguousarray: it turns scalars into shape (1,).)
  flat = {name: np.asarray(jax.device_get(value), order="C")
          for name, value in flatten(params).items()}
  epath.Path(path).write_bytes(safetensors_np.save(flat, metadata={"format": "eclip_jax"}))


# --------------------------------------------------------------------------------------------
# CLIP -> params.
# --------------------------------------------------------------------------------------------
def is_clip_state_dict(state_dict: Mapping[str, Any]) -> bool:
  return any(name.startswith(_CLIP_PREFIXES) for name in state_dict)


def _linear(state_dict, name: str) -> dict[str, np.ndarray]:
  """torch Linear (weight [out, in]) -> flax Dense (kernel [in, out])."""
  params = {"kernel": state_dict[f"{name}.weight"].T}
  if f"{name}.bias" in state_dict:
    params["bias"] = state_dict[f"{name}.bias"]
  return params


def _layer_norm(state_dict, name: str) -> dict[str, np.ndarray]:
  return {"scale": state_dict[f"{name}.weight"], "bias": state_dict[f"{name}.bias"]}


def _attention(state_dict, name: str, num_heads: int) -> dict[str, Any]:
  """q/k/v/out projections; heads split the width heads-major, as CLIP's `view` does."""
  params = {}
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    linear = _linear(state_dict, f"{name}.{theirs}")
    width = linear["kernel"].shape[0]
    params[ours] = {"kernel": linear["kernel"].reshape(width, num_heads, -1),
                    "bias": linear["bias"].reshape(num_heads, -1)}
  out = _linear(state_dict, f"{name}.out_proj")
  params["out"] = {"kernel": out["kernel"].reshape(num_heads, -1, out["kernel"].shape[1]),
                   "bias": out["bias"]}
  return params


def _encoder(state_dict, prefix: str, num_heads: int, final_norm: str) -> dict[str, Any]:
  depth = len({m.group(1) for name in state_dict
               if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", name))})
  encoder = {}
  for i in range(depth):
    layer = f"{prefix}encoder.layers.{i}"
    encoder[f"block_{i}"] = {
        "ln_attn": _layer_norm(state_dict, f"{layer}.layer_norm1"),
        "attn": _attention(state_dict, f"{layer}.self_attn", num_heads),
        "ln_mlp": _layer_norm(state_dict, f"{layer}.layer_norm2"),
        "mlp": {"fc1": _linear(state_dict, f"{layer}.mlp.fc1"),
                "fc2": _linear(state_dict, f"{layer}.mlp.fc2")},
    }
  # CLIP's vision `post_layernorm` normalizes only the pooled [CLS] token, ours every token:
  # the pooled output is the same.
  encoder["ln_final"] = _layer_norm(state_dict, f"{prefix}{final_norm}")
  return encoder


def _patch_embed(kernel: np.ndarray, value_range: tuple[float, float]) -> dict[str, np.ndarray]:
  """CLIP's bias-free conv on normalized pixels as a conv with bias on `value_range` pixels.

  With x = low + (high - low) p/255 our input and CLIP's (p/255 - mean_c) / std_c = a_c x + b_c
  (a_c = 1 / ((high - low) std_c), b_c = (-low / (high - low) - mean_c) / std_c), the conv is
  sum K a_c x + sum K b_c: the kernel scaled per input channel plus a constant bias (exact:
  the conv has no padding).
  """
  low, high = value_range
  mean, std = np.asarray(CLIP_MEAN, np.float64), np.asarray(CLIP_STD, np.float64)
  scale = 1.0 / ((high - low) * std)
  shift = (-low / (high - low) - mean) / std
  kernel = np.asarray(kernel, np.float64)  # [out, in (RGB), kh, kw]
  bias = np.einsum("oihw,i->o", kernel, shift)
  flax_kernel = np.transpose(kernel * scale[None, :, None, None], (2, 3, 1, 0))  # [kh,kw,in,out]
  return {"kernel": flax_kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def from_clip(state_dict: Mapping[str, Any], *, image_heads: int | None = None,
              text_heads: int | None = None,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> dict[str, Any]:
  """A CLIPModel state dict (torch tensors or arrays) -> this codebase's params (unscanned).

  Holds the towers the state dict has. Attention heads default to CLIP's width / 64 (every
  OpenAI CLIP); give `image_heads` / `text_heads` for other checkpoints.
  """
  state_dict = state_dict_to_numpy(state_dict)
  if not is_clip_state_dict(state_dict):
    raise ValueError("not a CLIP state dict: it has no vision_model.* or text_model.* weights")
  params: dict[str, Any] = {}
  if "vision_model.embeddings.patch_embedding.weight" in state_dict:
    prefix = "vision_model."
    class_embedding = state_dict[f"{prefix}embeddings.class_embedding"]
    width = class_embedding.shape[0]
    positions = state_dict[f"{prefix}embeddings.position_embedding.weight"]
    params["image_tower"] = {
        "patch_embed": _patch_embed(state_dict[f"{prefix}embeddings.patch_embedding.weight"],
                                    value_range),
        "pos_embed": positions[None, 1:],
        "cls_token": (class_embedding + positions[0])[None, None],
        "ln_pre": _layer_norm(state_dict, f"{prefix}pre_layrnorm"),
        "encoder": _encoder(state_dict, prefix, image_heads or width // 64, "post_layernorm"),
    }
    if "visual_projection.weight" in state_dict:
      params["image_proj"] = _linear(state_dict, "visual_projection")
  if "text_model.embeddings.token_embedding.weight" in state_dict:
    prefix = "text_model."
    token_embed = state_dict[f"{prefix}embeddings.token_embedding.weight"]
    params["text_tower"] = {
        "token_embed": token_embed,
        "pos_embed": state_dict[f"{prefix}embeddings.position_embedding.weight"][None],
        "encoder": _encoder(state_dict, prefix, text_heads or token_embed.shape[1] // 64,
                            "final_layer_norm"),
    }
    if "text_projection.weight" in state_dict:
      params["text_proj"] = _linear(state_dict, "text_projection")
  if "logit_scale" in state_dict:
    params["logit_scale"] = np.asarray(state_dict["logit_scale"], np.float32).reshape(())
  return params


# --------------------------------------------------------------------------------------------
# A weights file -> params laid out like a model's.
# --------------------------------------------------------------------------------------------
def read_params(path: str | epath.Path, abstract_params: Mapping[str, Any], *,
                include: str = ".*",
                value_range: tuple[float, float] = (-1.0, 1.0)) -> dict[str, Any]:
  """What the weights file at `path` holds for a model whose params `abstract_params`
  describes (arrays or `jax.ShapeDtypeStruct`s): numpy arrays of the model's shapes and
  dtypes, for the model's parameters the file has, of those whose path matches `include`
  (a regex, as `config.init_params`; the rest of the file is not looked at).

  The file is a CLIP state dict (converted with `from_clip`; heads taken from the model) or
  params this codebase saved (`save_safetensors`). Blocks are stacked or unstacked to the
  model's scanned or unscanned layout. A weight the model has no place for, or of another
  shape, raises an error naming it and the config field to change; the model's parameters
  the file lacks are left out (the caller keeps their initial values).
  """
  state_dict = read_state_dict(path)
  if is_clip_state_dict(state_dict):
    loaded = from_clip(state_dict, image_heads=_heads(abstract_params, "image_tower"),
                       text_heads=_heads(abstract_params, "text_tower"), value_range=value_range)
  else:
    loaded = unflatten(state_dict)
  pattern = re.compile(include)
  loaded = unflatten({name: value for name, value in flatten(loaded).items()
                      if pattern.search(name)})
  return _fit(loaded, abstract_params, "")


def _heads(target: Mapping[str, Any], tower: str) -> int | None:
  """The attention heads of `tower` in the target: the middle axis of a query kernel."""
  encoder = target.get(tower, {}).get("encoder", {})
  block = encoder.get("blocks", encoder.get("block_0"))
  return None if block is None else block["attn"]["query"]["kernel"].shape[-2]


def _fit(loaded: Mapping[str, Any], target: Mapping[str, Any], path: str) -> dict[str, Any]:
  """`loaded` in `target`'s layout, shapes and dtypes (target keys it lacks left out)."""
  loaded = _match_scan_layout(loaded, target)
  unplaced = sorted(set(loaded) - set(target))
  if unplaced:
    name = f"{path}{unplaced[0]}"
    raise ValueError(f"the weights file has {name} but the model has no such parameter; "
                     f"{_layout_hint(name)}")
  fitted = {}
  for key, value in loaded.items():
    name, want = f"{path}{key}", target[key]
    if isinstance(want, Mapping) != isinstance(value, Mapping):
      raise ValueError(f"{name} is a {'group' if isinstance(value, Mapping) else 'single'} "
                       f"parameter in the weights file but not in the model; {_layout_hint(name)}")
    if isinstance(want, Mapping):
      fitted[key] = _fit(value, want, name + "/")
      continue
    value = np.asarray(value)
    if name == "text_tower/pos_embed" and value.shape[1] > want.shape[1]:
      value = value[:, :want.shape[1]]  # the tower reads positions [0, max_len) only: exact
    if value.shape != tuple(want.shape):
      raise ValueError(f"parameter {name} has shape {value.shape} in the weights file but "
                       f"{tuple(want.shape)} in the model; {_layout_hint(name, value.shape)}")
    fitted[key] = value.astype(want.dtype, copy=False)
  return fitted


def _match_scan_layout(loaded: Mapping[str, Any], target: Mapping[str, Any]) -> Mapping[str, Any]:
  """Stacks `block_<i>` into `blocks` (a scanned target), or unstacks `blocks`."""
  blocks = sorted((k for k in loaded if re.fullmatch(r"block_\d+", k)),
                  key=lambda k: int(k.split("_")[1]))
  if "blocks" in target and blocks:
    stacked = jax.tree.map(lambda *layers: np.stack(layers), *(loaded[k] for k in blocks))
    return {**{k: v for k, v in loaded.items() if k not in blocks}, "blocks": stacked}
  if "block_0" in target and "blocks" in loaded:
    depth = len(jax.tree.leaves(loaded["blocks"])[0])
    unstacked = {f"block_{i}": jax.tree.map(lambda x, i=i: x[i], loaded["blocks"])
                 for i in range(depth)}
    return {**{k: v for k, v in loaded.items() if k != "blocks"}, **unstacked}
  return loaded


def _layout_hint(name: str, shape: tuple[int, ...] = ()) -> str:
  """Which config field makes the model hold the weight `name` (of `shape` in the file)."""
  tower = "image" if name.startswith("image_tower") else "text"
  if name.endswith("/ln_pre"):
    return "set model.image.pre_norm=True (CLIP normalizes its input tokens)"
  if name.endswith("/cls_token"):
    return "set model.image.pool='cls' (CLIP pools its [CLS] token)"
  if re.search(r"/(block_\d+|blocks)$", name):
    return f"set model.{tower}.depth (or its variant) to the checkpoint's number of blocks"
  if name.startswith("image_tower/pos_embed"):
    return ("set input.image_size to the checkpoint's (grid x patch; position embeddings are "
            "not interpolated)")
  if name.startswith("text_tower/token_embed"):
    return (f"set model.text.vocab_size={shape[0]} (OpenAI CLIP's is {CLIP_VOCAB_SIZE}, BPE ids "
            "this codebase's tokenizers do not produce), or import only the image tower with "
            "--config.init_params='^image_(tower|proj)/'")
  if name.startswith(("image_proj", "text_proj")):
    return "set model.embed_dim to the checkpoint's projection width"
  return (f"set model.{tower}.variant, or its width / depth / num_heads / mlp_dim fields, to "
          "the checkpoint's")
