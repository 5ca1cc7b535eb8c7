"""Encoders (teacher and student), the predictor and the pixel decoder."""

from .predictor import PREDICTOR_CONFIG, Predictor, build_pixel_decoder, build_predictor
from .vit import ENCODER_PRESETS, ViTConfig, VisionTransformer, build_encoder

__all__ = [
    "ENCODER_PRESETS",
    "PREDICTOR_CONFIG",
    "Predictor",
    "ViTConfig",
    "VisionTransformer",
    "build_encoder",
    "build_pixel_decoder",
    "build_predictor",
]
