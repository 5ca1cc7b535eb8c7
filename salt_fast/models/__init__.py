"""Encoders (teacher and student), the predictor and the pixel decoder."""

from .predictor import PREDICTOR_CONFIG, Predictor, build_pixel_decoder, build_predictor
from .vit import ATTENTION_BACKENDS, ENCODER_PRESETS, ViTConfig, VisionTransformer, build_encoder, set_attention_backend

__all__ = [
    "ATTENTION_BACKENDS",
    "ENCODER_PRESETS",
    "PREDICTOR_CONFIG",
    "Predictor",
    "ViTConfig",
    "VisionTransformer",
    "build_encoder",
    "build_pixel_decoder",
    "build_predictor",
    "set_attention_backend",
]
