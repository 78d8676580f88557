"""LightningModules, losses, metrics, schedulers and optimizers that torch lacks."""

import torch
from omegaconf import OmegaConf


def auto_precision() -> str:
    """bf16-mixed on a GPU that supports it, fp32 elsewhere (bf16 on CPU is hundreds of times slower)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def auto_accelerator() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


OmegaConf.register_new_resolver("auto_precision", auto_precision, replace=True)
OmegaConf.register_new_resolver("auto_accelerator", auto_accelerator, replace=True)
