"""Video data: file lists and mixtures, sharding, decoding (PyAV on CPU, DALI on GPU), clip
sampling, transforms, synthetic videos (and intuitive-physics test videos built from them), and
the loader that yields masked batches.

Speed: ``benchmarks/data.py`` measures the CPU loader against a V-JEPA 2-style loader.

``salt_fast.data.dali`` imports NVIDIA DALI lazily; everything else needs only torch, numpy,
PyAV and pillow.
"""

from .decode import VideoDecodeError, VideoIndex, VideoInfo, decode_frames, probe, read_index
from .lists import Mixture, ShardedSampler, VideoList, is_image, shard
from .loader import DECODERS, Batch, BatchCollator, StepBatchSampler, TooManyBadFiles, VideoClips, epoch_order, video_loader
from .physics import make_physics_dataset, render_quad
from .sampling import clip_indices, eval_clip_starts, frame_step_for_fps
from .synthetic import SyntheticClips, make_synthetic_dataset, render_clip, write_video
from .transforms import EvalTransform, Normalize, TrainTransform

__all__ = [
    "DECODERS",
    "Batch",
    "BatchCollator",
    "EvalTransform",
    "Mixture",
    "Normalize",
    "ShardedSampler",
    "StepBatchSampler",
    "SyntheticClips",
    "TooManyBadFiles",
    "TrainTransform",
    "VideoClips",
    "VideoDecodeError",
    "VideoIndex",
    "VideoInfo",
    "VideoList",
    "clip_indices",
    "decode_frames",
    "epoch_order",
    "eval_clip_starts",
    "frame_step_for_fps",
    "is_image",
    "make_physics_dataset",
    "make_synthetic_dataset",
    "probe",
    "read_index",
    "render_clip",
    "render_quad",
    "shard",
    "video_loader",
    "write_video",
]
