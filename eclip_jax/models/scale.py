"""SCALE (M5Product): five unimodal encoders and one fusion transformer over all their tokens.

    text   text_tokens(_masked), text_mask            -> TextEncoder  ─┐
    table  table_tokens(_masked), table_mask          -> TextEncoder   │  (one text tower when
    image  image  |  region_feats, region_boxes, region_mask           │   share_text_encoders)
    video  video, video_mask  |  frame_feats, frame_mask               ├─ tokens [B,T_m,W_m]
    audio  audio_mel, audio_mel_mask                                  ─┘
        each -> to fusion width + modality-type embedding -> concatenated -> fusion Encoder
        (keys: the tokens that exist: padding and missing modalities never attended to)
        -> each modality's segment; its first token -> fused_{m}_emb; tokens -> MLM heads

A modality runs when it is in `modalities` and its inputs are in the batch (an evaluator can
encode titles alone). Which input encodes the image and the video is `image_input`
("pixels", "regions") and `video_input` ("pixels", "features"); "auto" takes the feature
input when its key is in the batch (`region_feats`, `frame_feats`), else the pixels.

A modality is *missing* from a row when its mask is all False (`{m}_present`); its inputs,
like padding, are zero-imputed by the encoders (models/modality.py), so neither changes any
output. Missing modalities' embeddings are 0 (no information, and a cosine of 0 with
everything), so `fused_emb` is the sum over every modality.

Outputs, for each modality m that ran (the objectives' and evaluators' contract):

    {m}_emb          [B,D]  pooled unimodal embedding, L2-normalized (0 where missing)
    {m}_present      [B]    bool
    fused_{m}_emb    [B,D]  fused first token of m's segment, projected, L2-normalized (0 where
                            missing)
    fused_emb        [B,D]  sum of fused_{m}_emb: the M5Product protocol's embedding
    text_mlm_logits  [B,L,V]      table_mlm_logits [B,Lt,V]    (from the fused tokens)
                     with `mlm_slots` and the batch's `*_mlm_targets`: [B,K,V] at K
                     positions per row, the masked ones first, and
    text_mlm_positions [B,K]      table_mlm_positions [B,K]    those positions
    region_pred      [B,R,2048]   frame_pred [B,F,1024]   (feature inputs only)
    image_patch_pred [B,P,p·p·3]  one prediction per image patch (pixel input)
    audio_mel_pred   [B,T,80]     one prediction per mel frame
    logit_scale, logit_bias       as the two-tower model's, float32 scalars
    harmonization    [5,5]  the learned S of scale.harmonize="learned" (0 at init)

`image_emb` and `text_emb` are the unimodal ones, so the retrieval evaluators work as for
the two-tower model. Masked modeling: text and table read `*_tokens_masked` when the batch
has them; regions, frames, mel frames and image patches under `*_mlm_mask` are zeroed (their
features and pixels are the regression targets). Pixel video frames have no masked term.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from eclip_jax.data import schema
from eclip_jax.metrics import transformer_flops
from eclip_jax.models import layers
from eclip_jax.models import modality
from eclip_jax.models import text as text_lib
from eclip_jax.models import two_tower
from eclip_jax.models import vit
from eclip_jax.models.layers import DType, partitioned
from eclip_jax.objectives import scale as scale_objectives

# Fusion order and modality-type embedding index; fixed, so a subset keeps its indices.
# The objectives' order too (their harmonization matrix is indexed by it).
MODALITIES = scale_objectives.MODALITIES
IMAGE_INPUTS = ("auto", "pixels", "regions")
VIDEO_INPUTS = ("auto", "pixels", "features")


class PredictionHead(nn.Module):
  """BERT's prediction head: Dense -> GELU -> LN -> Dense to `features` (float32 out)."""

  features: int
  out_axis: str | None = None
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.gelu(modality.dense(width, ("embed", "mlp"), self.dtype, self.param_dtype,
                               "transform")(x))
    x = layers.layer_norm(self.dtype, self.param_dtype, name="ln")(x)
    x = modality.dense(self.features, ("mlp", self.out_axis), self.dtype, self.param_dtype,
                       "out")(x)
    return x.astype(jnp.float32)


def _mlm_hidden(batch: dict[str, jax.Array], key: str, mlm_key: str) -> jax.Array:
  """`batch[key]` with the positions `batch[mlm_key]` hides zeroed (when it is there)."""
  if mlm_key not in batch:
    return batch[key]
  return modality.impute(batch[key], ~batch[mlm_key].astype(bool))


class Scale(nn.Module):
  """SCALE's encoders + fusion (module docstring).

  Fields: `text` (TextTransformer fields of the title tower; its pooling is "cls"; shared
  with the table, its `max_len` must cover `input.max_table_len` too), `table` (the table
  tower's, when not shared; default: `text`'s), `image` (ViT fields, pixels),
  `regions`, `video`, `audio`, `fusion` (dicts of `width`, `depth`, `num_heads`,
  `mlp_dim`; `video` may add `frame_tower`, ViT fields for pixel frames, and `audio`
  `patch_frames`, mel frames per token, 1 by default as the release's mel tokens).
  """

  text: dict[str, Any]
  fusion: dict[str, int]
  embed_dim: int
  modalities: tuple[str, ...] = MODALITIES
  share_text_encoders: bool = True
  table: dict[str, Any] | None = None
  image: dict[str, Any] | None = None
  regions: dict[str, int] | None = None
  video: dict[str, Any] | None = None
  audio: dict[str, Any] | None = None
  image_input: str = "auto"
  video_input: str = "auto"
  temperature_init: float = 0.07
  bias_init: float = -10.0
  dtype: str | DType = "float32"
  param_dtype: str | DType = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"  # layers.ATTENTION_IMPLS
  # Masked-token predictions per row ({"text": K, "table": K}): the vocabulary head, at
  # training time most of the step's cost when it scores every position, runs on K of them
  # (the masked ones first), as BERT's max_predictions_per_seq. A K below a row's number of
  # targets leaves the rest unscored (counted: the objective's `unscored_*`); None or 0:
  # every position.
  mlm_slots: dict[str, int] | None = None

  def _check(self):
    unknown = sorted(set(self.modalities) - set(MODALITIES))
    if unknown:
      raise ValueError(f"model.modalities has unknown {unknown}; known: {MODALITIES}")
    if self.image_input not in IMAGE_INPUTS:
      raise ValueError(f"model.image_input={self.image_input!r} is not one of {IMAGE_INPUTS}")
    if self.video_input not in VIDEO_INPUTS:
      raise ValueError(f"model.video_input={self.video_input!r} is not one of {VIDEO_INPUTS}")

  def _kwargs(self) -> dict[str, Any]:
    return dict(scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                attention_impl=self.attention_impl, dtype=jnp.dtype(self.dtype), param_dtype=jnp.dtype(self.param_dtype))

  def _input(self, name: str, batch_keys) -> str | None:
    """How `name` ("image" or "video") is encoded for a batch with `batch_keys`: "pixels",
    or "regions" / "features"; None when the batch lacks that input."""
    pixels_key, feature_key, features, choice = {
        "image": ("image", "region_feats", "regions", self.image_input),
        "video": ("video", "frame_feats", "features", self.video_input)}[name]
    if choice == "auto":
      choice = features if feature_key in batch_keys else "pixels"
    return choice if (pixels_key if choice == "pixels" else feature_key) in batch_keys else None

  def _text_tower(self, fields: dict[str, Any], name: str) -> text_lib.TextTransformer:
    kwargs = self._kwargs()
    return text_lib.TextTransformer(**{**fields, "pool": "cls"}, **kwargs, name=name)

  def _sizes(self, name: str) -> dict[str, int]:
    fields = dict(getattr(self, name) or {})
    fields.pop("frame_tower", None)
    fields.pop("patch_frames", None)
    if not fields:
      raise ValueError(f"model.{name} (width, depth, num_heads, mlp_dim) is needed to encode "
                       f"the {name} modality; set it")
    return fields

  def encode(self, batch: dict[str, jax.Array]) -> dict[str, modality.Encoded]:
    """The unimodal encoders of the configured modalities whose inputs the batch holds."""
    kwargs, encoded = self._kwargs(), {}
    text_tower = None
    for name in ("text", "table"):
      if name not in self.modalities or f"{name}_tokens" not in batch:
        continue
      if name == "table" and not self.share_text_encoders:
        tower = self._text_tower(self.table or self.text, "table_tower")
      else:  # the title's tower, called a second time for a shared table
        text_tower = tower = text_tower or self._text_tower(self.text, "text_tower")
      tokens = batch.get(f"{name}_tokens_masked", batch[f"{name}_tokens"])
      encoded[name] = modality.TextEncoder(
          tower, self.embed_dim, kwargs["dtype"], kwargs["param_dtype"], name=f"{name}_encoder"
      )(tokens, batch[f"{name}_mask"])

    image_input = self._input("image", batch) if "image" in self.modalities else None
    if image_input == "pixels":
      if self.image is None:
        raise ValueError("model.image (ViT fields) is needed to encode image pixels; set it")
      images = batch["image"]
      # A record always has an image; `image_present` marks the examples that lost theirs
      # (input.simulate_missing).
      present = batch.get("image_present", jnp.ones(images.shape[:1], bool))
      if "image_mlm_mask" in batch:  # masked-patch regression: the hidden patches read 0
        images = vit.hide_patches(images, batch["image_mlm_mask"],
                                  self._image_patch(images.shape[1], batch["image_mlm_mask"]))
      encoded["image"] = modality.ImagePixelEncoder(
          self.image, self.embed_dim, **kwargs, name="image_encoder"
      )(images, present.astype(bool))
    elif image_input == "regions":
      encoded["image"] = modality.RegionEncoder(
          self._sizes("regions"), self.embed_dim, **kwargs, name="region_encoder"
      )(_mlm_hidden(batch, "region_feats", "region_mlm_mask"), batch["region_boxes"],
        batch["region_mask"].astype(bool))

    video_input = self._input("video", batch) if "video" in self.modalities else None
    if video_input is not None:
      frames, mask = (("video", "video_mask") if video_input == "pixels" else
                      ("frame_feats", "frame_mask"))
      encoded["video"] = modality.VideoEncoder(
          self._sizes("video"), self.embed_dim, (self.video or {}).get("frame_tower"),
          **kwargs, name="video_encoder"
      )(_mlm_hidden(batch, frames, "frame_mlm_mask") if video_input == "features"
        else batch[frames], batch[mask])

    if "audio" in self.modalities and "audio_mel" in batch:
      encoded["audio"] = modality.AudioEncoder(
          self._sizes("audio"), self.embed_dim, self._patch_frames(), **kwargs,
          name="audio_encoder"
      )(_mlm_hidden(batch, "audio_mel", "audio_mel_mlm_mask"), batch["audio_mel_mask"])
    return encoded

  def _patch_frames(self) -> int:
    return int((self.audio or {}).get("patch_frames", 1))

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False) -> dict[str, Any]:
    del train  # no dropout
    self._check()
    encoded = self.encode(batch)
    outputs = {}
    for name, enc in encoded.items():
      present = jnp.any(enc.mask, axis=1)
      outputs[f"{name}_present"] = present
      outputs[f"{name}_emb"] = enc.emb * present[:, None]
    if encoded:
      outputs.update(self._fuse(encoded, outputs, batch))

    # The learned S of scale.harmonize="learned" (objectives/scale.py), hosted whatever the
    # mode so that one checkpoint layout serves every mode: 25 floats, without a gradient
    # unless "learned" reads them.
    outputs["harmonization"] = scale_objectives.HarmonizationWeights(
        len(MODALITIES), name="harmonization")()
    log_scale = self.scalar("logit_scale", math.log(1.0 / self.temperature_init))
    outputs["logit_scale"] = jnp.exp(jnp.minimum(log_scale, math.log(two_tower.MAX_LOGIT_SCALE)))
    outputs["logit_bias"] = self.scalar("logit_bias", self.bias_init)
    return outputs

  def _fuse(self, encoded: dict[str, modality.Encoded], outputs: dict[str, Any],
            batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The fusion transformer over every segment, its per-modality embeddings and heads."""
    kwargs = self._kwargs()
    dtype, param_dtype = kwargs["dtype"], kwargs["param_dtype"]
    width = self.fusion["width"]
    type_embed = self.param(
        "modality_type_embed",
        partitioned(nn.initializers.normal(stddev=0.02), (None, "embed")),
        (len(MODALITIES), width), param_dtype)
    segments, masks = [], []
    for name, enc in encoded.items():
      tokens = modality.dense(width, (None, "embed"), dtype, param_dtype,
                              f"{name}_to_fusion")(enc.tokens)
      segments.append(tokens + type_embed[MODALITIES.index(name)].astype(dtype))
      masks.append(enc.mask)
    mask = jnp.concatenate(masks, axis=1)
    fused = layers.Encoder(
        self.fusion["depth"], self.fusion["num_heads"], self.fusion["mlp_dim"], **kwargs,
        name="fusion",
    )(jnp.concatenate(segments, axis=1), mask[:, None, None, :])

    result, fused_sum, start = {}, 0.0, 0
    for name, enc in encoded.items():
      segment = fused[:, start:start + enc.tokens.shape[1]]
      start += enc.tokens.shape[1]
      present = outputs[f"{name}_present"][:, None]
      emb = two_tower.l2_normalize(modality.dense(
          self.embed_dim, ("embed", "joint"), dtype, param_dtype, f"fused_{name}_proj",
          use_bias=False)(segment[:, 0])) * present
      result[f"fused_{name}_emb"] = emb
      fused_sum = fused_sum + emb
      result.update(self._heads(name, segment, batch))
    result["fused_emb"] = fused_sum
    return result

  def _heads(self, name: str, segment: jax.Array, batch: dict[str, jax.Array]
             ) -> dict[str, jax.Array]:
    """The masked-modeling predictions of modality `name` from its fused segment."""
    kwargs = self._kwargs()
    head_kwargs = dict(dtype=kwargs["dtype"], param_dtype=kwargs["param_dtype"])
    if name in ("text", "table"):
      fields = self.text if name == "text" or self.share_text_encoders else (self.table or
                                                                             self.text)
      result = {}
      slots, targets = (self.mlm_slots or {}).get(name, 0), batch.get(f"{name}_mlm_targets")
      if slots and targets is not None and slots < segment.shape[1]:
        # Only masked positions have a loss. A stable sort puts them first, in order.
        positions = jnp.argsort(targets < 0, axis=1, stable=True)[:, :slots]
        segment = jnp.take_along_axis(segment, positions[..., None], axis=1)
        result[f"{name}_mlm_positions"] = positions
      result[f"{name}_mlm_logits"] = PredictionHead(
          fields["vocab_size"], "vocab", **head_kwargs, name=f"{name}_mlm_head")(segment)
      return result
    if name == "image" and self._input("image", batch) == "pixels":
      patch = vit.ViT(**self.image, parent=None).shape()[1]
      return {"image_patch_pred": PredictionHead(
          patch * patch * 3, **head_kwargs, name="image_patch_head")(segment[:, 1:])}
    if name == "image" and self._input("image", batch) == "regions":
      return {"region_pred": PredictionHead(
          schema.REGION_FEATURE_DIM, **head_kwargs, name="region_head")(segment[:, 1:])}
    if name == "video" and self._input("video", batch) == "features":
      return {"frame_pred": PredictionHead(
          schema.FRAME_FEATURE_DIM, **head_kwargs, name="frame_head")(segment[:, 1:])}
    if name == "audio":
      patch_frames, num_frames = self._patch_frames(), batch["audio_mel"].shape[1]
      pred = PredictionHead(patch_frames * schema.MEL_BINS, **head_kwargs,
                            name="audio_mel_head")(segment[:, 1:])
      pred = pred.reshape(pred.shape[0], -1, schema.MEL_BINS)[:, :num_frames]
      return {"audio_mel_pred": pred}
    return {}

  def _image_patch(self, image_size: int, hidden: jax.Array) -> int:
    """The ViT's patch size, checked against the pipeline's `image_mlm_mask`."""
    patch = vit.ViT(**self.image, parent=None).shape()[1]
    if hidden.shape[-1] != (image_size // patch) ** 2:
      raise ValueError(
          f"image_mlm_mask has {hidden.shape[-1]} patches, but model.image cuts "
          f"{image_size}-pixel images into {(image_size // patch) ** 2} of {patch} pixels; "
          f"set input.mask_patch_size={patch}.")
    return patch

  def scalar(self, name: str, value: float) -> jax.Array:
    # float32 whatever param_dtype is (two_tower.TwoTower.scalar says why).
    return self.param(name, partitioned(nn.initializers.constant(value), ()), (), jnp.float32)

  def flops_per_example(self, input_config) -> float:
    """Analytic forward FLOPs of one example of `input_config`: the matmuls of every encoder
    that its modalities feed, the fusion transformer over all their tokens, the projections
    and the prediction heads (norms, softmaxes, means and the losses are negligible)."""
    given = set(input_config.modalities)
    image_input = self.image_input if self.image_input != "auto" else (
        "regions" if "regions" in given else "pixels")
    video_input = self.video_input if self.video_input != "auto" else (
        "features" if "video_feats" in given else "pixels")
    fusion_width = self.fusion["width"]
    # Per modality that runs: (tokens in its segment, its width, heads' [(positions, outputs)]).
    segments: dict[str, tuple[int, int, list[tuple[int, int]]]] = {}
    flops = 0.0

    def sequence(name: str, num_tokens: int) -> float:
      size = self._sizes(name)
      return transformer_flops(num_tokens + 1, size["width"], size["depth"], size["num_heads"],
                               size["mlp_dim"])

    for name, length_field in (("text", "max_text_len"), ("table", "max_table_len")):
      if name in self.modalities and name in given:
        fields = self.text if name == "text" or self.share_text_encoders else (
            self.table or self.text)
        size = text_lib.TextTransformer(**fields, parent=None).size()
        length = getattr(input_config, length_field)
        flops += transformer_flops(length, *size)
        segments[name] = (length, size.width, [(length, fields["vocab_size"])])
    if "image" in self.modalities and image_input == "pixels" and "image" in given:
      num_patches, image_flops, image_width = _vit_flops(self.image, input_config.image_size)
      flops += image_flops
      patch = vit.ViT(**self.image, parent=None).shape()[1]
      segments["image"] = (num_patches + 1, image_width, [(num_patches, patch * patch * 3)])
    elif "image" in self.modalities and image_input == "regions" and "regions" in given:
      regions, width = input_config.max_regions, self._sizes("regions")["width"]
      feature_dim = schema.REGION_FEATURE_DIM + schema.REGION_BOX_DIM
      flops += 2 * regions * feature_dim * width + sequence("regions", regions)
      segments["image"] = (regions + 1, width, [(regions, schema.REGION_FEATURE_DIM)])
    if "video" in self.modalities and video_input == "pixels" and "video" in given:
      frames, width = input_config.video_frames, self._sizes("video")["width"]
      _, frame_flops, frame_width = _vit_flops(self.video["frame_tower"], input_config.video_size)
      flops += frames * (frame_flops + 2 * frame_width * width) + sequence("video", frames)
      segments["video"] = (frames + 1, width, [])
    elif "video" in self.modalities and video_input == "features" and "video_feats" in given:
      frames, width = input_config.video_feat_frames, self._sizes("video")["width"]
      flops += 2 * frames * schema.FRAME_FEATURE_DIM * width + sequence("video", frames)
      segments["video"] = (frames + 1, width, [(frames, schema.FRAME_FEATURE_DIM)])
    if "audio" in self.modalities and "audio_mel" in given:
      patch_frames, width = self._patch_frames(), self._sizes("audio")["width"]
      patches = -(-input_config.audio_mel_frames // patch_frames)
      patch_dim = patch_frames * schema.MEL_BINS
      flops += 2 * patches * patch_dim * width + sequence("audio", patches)
      segments["audio"] = (patches + 1, width, [(patches, patch_dim)])

    total_tokens = sum(tokens for tokens, _, _ in segments.values())
    flops += transformer_flops(total_tokens, fusion_width, self.fusion["depth"],
                               self.fusion["num_heads"], self.fusion["mlp_dim"])
    for tokens, width, heads in segments.values():
      flops += (2 * tokens * width * fusion_width  # into the fusion width
                + 2 * (width + fusion_width) * self.embed_dim)  # unimodal and fused projections
      for positions, features in heads:
        flops += positions * (2 * fusion_width**2 + 2 * fusion_width * features)
    return float(flops)


def _vit_flops(fields: dict[str, Any], image_size: int) -> tuple[int, float, int]:
  """(patches, forward FLOPs, width) of a ViT of `fields` on one image_size² image: the
  patch embedding and the blocks over [CLS] + patches."""
  size, patch = vit.ViT(**fields, parent=None).shape()
  num_patches = (image_size // patch) ** 2
  flops = (2 * num_patches * patch * patch * 3 * size.width
           + transformer_flops(num_patches + 1, *size))
  return num_patches, flops, size.width
