"""megatron-cogview: a tested, model-parallel re-implementation of CogView (NeurIPS 2021)."""
from setuptools import find_packages, setup

setup(
    name="megatron-cogview",
    version="0.1.0",
    description="Megatron/DeepSpeed-style model-parallel training of CogView text-to-image transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(
        include=["megatron_cogview*", "tokenization*", "data_utils*"]
    ),
    # arguments.py, pretrain_gpt2.py and finetune/ are repo-root shims (`deepspeed pretrain_gpt2.py ...`,
    # `python -m finetune.style ...`), not installed modules: the parser is megatron_cogview.arguments, the entry
    # megatron_cogview.commands.pretrain (`cogview train`) and the fine-tuning tasks megatron_cogview.finetune.
    package_data={"megatron_cogview.serve": ["page.html"]},
    install_requires=[
        "torch>=2.1",
        "deepspeed>=0.14",
        "sentencepiece>=0.1.99",
        "numpy>=1.24",
        "webdataset>=0.2.86",
        "braceexpand>=0.1.7",  # shard URL patterns (also a webdataset dependency; imported directly)
        "pillow>=10.0",
        "tqdm>=4.60",
        "safetensors>=0.4",
    ],
    extras_require={
        "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "scipy>=1.10", "wandb>=0.17", "fastapi>=0.110", "uvicorn>=0.29",
                "python-multipart>=0.0.9", "httpx>=0.27", "playwright>=1.44", "ruff>=0.6"],
        # `cogview evaluate --features inception` uses torch-fidelity's FID Inception-v3; scripts/install.sh
        # installs it with --no-deps (eval and dev), since its torchvision requirement would replace torch.
        "eval": [],
        "tensorboard": ["tensorboard>=2.14"],
        "wandb": ["wandb>=0.17"],  # --wandb-project: experiment tracking beside metrics.jsonl / TensorBoard
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"],  # cogview serve (ASGI web stack)
        "bench": ["transformers>=4.40"],
    },
    entry_points={"console_scripts": ["cogview=megatron_cogview.cli:main"]},
)
