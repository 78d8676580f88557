"""W&B logger: online when the user is logged in or sets WANDB_MODE=online, offline otherwise."""

from __future__ import annotations

import os

from lightning.pytorch.loggers import WandbLogger


def wandb_is_online() -> bool:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode == "online"
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.Api(timeout=5).api_key)
    except Exception:  # no credentials, no network, no server: offline
        return False


def wandb_logger(**kwargs) -> WandbLogger:
    """WandbLogger(**kwargs) in online or offline mode as above (runs sync later with `wandb sync`).

    The mode goes to wandb.init directly: Lightning's `offline=True` sets WANDB_MODE=dryrun for the
    whole process, which wandb 0.31 no longer treats as offline.
    """
    return WandbLogger(mode="online" if wandb_is_online() else "offline", **kwargs)
