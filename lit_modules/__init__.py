"""LightningModules, losses, metrics, schedulers and optimizers that torch lacks."""

import torch
from omegaconf import OmegaConf

from lit_modules import loggers  # noqa: F401 - registers ${sweep_group:} and ${run_name:}


def auto_precision() -> str:
    """bf16-mixed on a GPU that supports it, fp32 elsewhere (bf16 on CPU is hundreds of times slower).

    Ours because Lightning has no "auto" precision (its accelerator="auto" covers the device)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


OmegaConf.register_new_resolver("auto_precision", auto_precision, replace=True)
# ${len:${data.source.bands}}: the number of bands, so model and data configs name the bands once
OmegaConf.register_new_resolver("len", lambda seq: len(seq), replace=True)
