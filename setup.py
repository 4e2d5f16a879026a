from setuptools import find_packages, setup

setup(
    name="slab-ms",
    version="0.1.0",
    description="SLAB (ICML 2024): Simplified Linear Attention and Progressive Re-parameterized BatchNorm "
                "backbones for MindSpore / MindCV",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["slab_ms", "slab_ms.*"]),
    package_data={"slab_ms.layers": ["cpu_kernels.cc"]},  # the native CPU kernels' source, compiled on first use
    python_requires=">=3.9",
    install_requires=["mindspore>=2.3,<2.11", "mindcv==0.3.0", "numpy>=1.26.4,<2", "pyyaml", "pillow"],
    extras_require={
        "test": ["pytest", "ruff", "scikit-learn", "onnxruntime", "safetensors", "matplotlib"],
        "demo": ["scikit-learn", "matplotlib"],
        "onnx": ["onnxruntime"],
        "safetensors": ["safetensors"],
        "bench": ["matplotlib"],
    },
    entry_points={"console_scripts": [
        f"slab-{tool}=slab_ms.{tool}:main" for tool in ("train", "validate", "export", "convert", "benchmark")]
        + ["slab-device-check=slab_ms.device_check:main",
           "slab-lm-demo=slab_ms.experiments.lm_demo:main",
           "slab-detection-demo=slab_ms.experiments.detection:main"]},
    license="Apache-2.0",
)
