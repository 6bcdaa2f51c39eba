"""warm-jax: WARM (Weight Averaged Reward Models) in JAX/Flax. See README.md."""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
  LONG_DESCRIPTION = f.read()

setup(
    name="warm-jax",
    version="0.1.0",
    description="Reference JAX/Flax implementation of WARM: weight averaged reward models "
                "for RLHF (Rame et al., ICML 2024)",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["warm_jax", "warm_jax.*"]),
    include_package_data=True,
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "gin-config>=0.5",
        "seqio>=0.0.20",
        "tensorflow-datasets>=4.9",
        "sentencepiece>=0.2",
        "numpy>=2.0",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        "etils>=1.5",
    ],
    extras_require={
        "test": ["pytest>=8"],
        # Converting needs safetensors (+ tokenizers for tokenizer.json); the parity tests build
        # reference models with torch/transformers. torch is pinned to the CPU wheel CI has.
        "hf": ["torch==2.13.0", "transformers>=5", "safetensors>=0.4", "tokenizers>=0.20"],
        # README's TRL snippet (tests/test_hf_export_text.py runs it where these are installed)
        "trl": ["trl>=1.0", "accelerate", "datasets"],
        "bench": ["psutil"],
    },
    entry_points={
        "console_scripts": [
            "warm-train=warm_jax.train:main",
            "warm-average=warm_jax.average:main",
            "warm-evaluate=warm_jax.evaluate:main",
            "warm-experiment=warm_jax.experiment:main",
            "warm-data-build=warm_jax.data.build:main",
            "warm-convert=warm_jax.convert:main",
        ],
    },
)
