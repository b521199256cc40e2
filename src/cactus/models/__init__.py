"""Architectures by config `model_type`: a new architecture is one file here plus one entry."""

from .lfm2 import Model as LFM2

ARCHITECTURES = {"lfm2": LFM2, "lfm2_moe": LFM2}
