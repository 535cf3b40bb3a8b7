"""A product's sound: size -> pitch, material -> timbre (partials + decay), category ->
a strike rhythm, so audio carries real signal about the product."""

from __future__ import annotations

import math
import zlib
from typing import NamedTuple

import numpy as np

from eclip_jax.data.toyshop import looks

_PITCH_HZ = {"small": 880.0, "medium": 440.0, "large": 220.0}


class _Timbre(NamedTuple):
  partials: tuple[tuple[float, float], ...]  # (frequency ratio to f0, amplitude)
  decay_s: float  # decay time constant of the fundamental
  noise: float  # share of band-limited noise around f0


# The fundamental is always the loudest partial, so pitch is the spectral peak.
_TIMBRES = {
    "metal": _Timbre(tuple((k, 0.8 / k ** 0.3) for k in range(2, 11)), 0.8, 0.0),
    "wood": _Timbre(((2.0, 0.3), (3.0, 0.1)), 0.05, 0.05),
    "glass": _Timbre(((2.76, 0.5), (5.4, 0.35)), 0.5, 0.0),
    "fabric": _Timbre(((2.0, 0.1),), 0.08, 0.6),
    "ceramic": _Timbre(((2.32, 0.45), (4.25, 0.25)), 0.25, 0.0),
    "plastic": _Timbre(((2.0, 0.35), (3.0, 0.2), (4.0, 0.08)), 0.1, 0.1),
    "leather": _Timbre(((2.0, 0.2),), 0.04, 0.3),
}
_RHYTHM_SLOTS = 8


def _onsets(category: str, duration_s: float) -> list[tuple[float, float]]:
  """(time, amplitude) strikes for a category: slots of an 8-step grid picked by crc32."""
  bits = zlib.crc32(category.encode())
  slots = [0] + [k for k in range(1, _RHYTHM_SLOTS) if bits >> k & 1]
  if len(slots) < 2:
    slots.append(_RHYTHM_SLOTS // 2)
  step = 0.8 * duration_s / _RHYTHM_SLOTS
  return [(0.02 * duration_s + k * step, 0.6 + 0.4 * (bits >> (8 + k) & 1)) for k in slots]


def _strike(timbre: _Timbre, f0: float, t: np.ndarray, sample_rate: int,
            rng: np.random.Generator) -> np.ndarray:
  """One struck note: decaying partials (higher ones die faster) plus band noise."""
  attack = np.minimum(t / 0.003, 1.0)
  wave = np.sin(2 * np.pi * f0 * t) * np.exp(-t / timbre.decay_s)
  for ratio, amp in timbre.partials:
    if f0 * ratio < sample_rate / 2:
      decay = np.exp(-t * math.sqrt(ratio) / timbre.decay_s)
      wave += amp * np.sin(2 * np.pi * f0 * ratio * t) * decay
  if timbre.noise:
    spectrum = np.fft.rfft(rng.standard_normal(t.size))
    freqs = np.fft.rfftfreq(t.size, 1 / sample_rate)
    spectrum *= np.exp(-(((freqs - f0) / (0.5 * f0)) ** 2))
    band = np.fft.irfft(spectrum, t.size)
    band /= np.abs(band).max() + 1e-9
    wave = (1 - timbre.noise) * wave + timbre.noise * band * np.exp(-t / (2 * timbre.decay_s))
  return wave * attack


def render_audio(look: looks.ProductLook, *, sample_rate: int, duration_s: float,
                 rng: np.random.Generator) -> np.ndarray:
  """Struck-object sound: size -> pitch, material -> timbre, category -> rhythm.

  Returns mono int16 [round(sample_rate * duration_s)], peak ~0.8 full scale."""
  length = round(sample_rate * duration_s)
  f0 = _PITCH_HZ[look.size] * (1 + rng.uniform(-0.03, 0.03))
  t = np.arange(length) / sample_rate
  note = _strike(_TIMBRES[look.material], f0, t, sample_rate, rng)
  wave = np.zeros(length)
  for onset, amp in _onsets(look.category, duration_s):
    # Snapping onsets to whole periods of f0 keeps overlapping rings in phase,
    # so repeated strikes reinforce the fundamental instead of cancelling it.
    start = round(round(onset * f0) / f0 * sample_rate)
    if start < length:
      wave[start:] += amp * note[: length - start]
  wave /= np.abs(wave).max() + 1e-9
  wave += 0.005 * rng.standard_normal(length)
  wave *= 0.8 * 32767 / (np.abs(wave).max() + 1e-9)
  return np.round(wave).astype(np.int16)
