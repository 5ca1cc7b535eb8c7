"""Build salt_fast: the Python package, `kernels/` as `salt_fast.kernels`, and `csrc/` as `salt_fast._C`.

The C++ extension compiles against the PyTorch that is already installed, so install torch
first (build_backend.py lets pip's isolated build see it; --no-build-isolation works too):

    pip install torch && pip install -e .
"""

from glob import glob

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - exercised only on a misconfigured install
    raise SystemExit(
        "salt_fast compiles csrc/ against your installed PyTorch, but `import torch` failed "
        f"({exc}). Install torch into this environment first (CPU: `pip install torch==2.13.0`), "
        "then run `pip install -e .` again"
    ) from exc


DALI = "nvidia-dali-cuda120>=1.40; platform_system == 'Linux' and platform_machine == 'x86_64'"


def extension():
    """salt_fast._C: every csrc/*.cpp; csrc/*.cu too when a CUDA torch and nvcc are both present."""
    sources = sorted(glob("csrc/*.cpp"))
    cuda_sources = sorted(glob("csrc/*.cu"))
    flags = {"cxx": ["-O3"]}
    if cuda_sources and torch.version.cuda is not None and CUDA_HOME is not None:
        return CUDAExtension(
            "salt_fast._C", sources + cuda_sources, extra_compile_args={**flags, "nvcc": ["-O3"]}
        )
    return CppExtension("salt_fast._C", sources, extra_compile_args=flags)


setup(
    name="salt_fast",
    version="0.1.0",
    description="Fast SALT (static-teacher asymmetric latent training) for video ViTs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["salt_fast", "salt_fast.*"]) + ["salt_fast.kernels"],
    package_dir={"salt_fast.kernels": "kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "av>=12.0",  # CPU video decoding (bundles its own FFmpeg)
        "pillow>=10.0",
        "safetensors>=0.4",  # encoder exports
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "matplotlib>=3.7",  # loss-curve plots
    ],
    extras_require={
        # NVIDIA DALI: GPU video decoding (NVDEC); its CPU variant decodes VP8/VP9/MJPEG.
        "dali": [DALI],
        # benchmarks/data.py: decord for its V-JEPA 2-style baseline loader (and the decord backend).
        "bench": ["decord>=0.6.0"],
        # Triton ships inside CUDA torch wheels; the CPU test suite needs it for TRITON_INTERPRET=1.
        "test": ["pytest>=8.0", "triton>=3.2; platform_system == 'Linux'", DALI],
    },
)
