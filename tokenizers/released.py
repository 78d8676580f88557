"""Published weights of other projects as SciTok tokenizers: `load_released(kind, weights, config=None, **options)`.

    phaedra = load_released("phaedra", "weights/phaedra/tokenizers/phaedra_4x4/model.safetensors")
    tokens = phaedra.encode(x)   # x: [B, 1, 128, 128] normalized field -> {"morph", "amp"}: int64 [B, 32, 32]
    vq16 = load_released("llamagen_vq", "weights/vq_ds16_c2i.pt")  # pixels in [-1, 1] -> {"tokens": [B, H/16, W/16]}
    save_tokenizer(phaedra, phaedra.spec, phaedra.metadata, "phaedra.ckpt")   # a SciTok checkpoint, for every tool

kind         released model (reference code)            file on the Hugging Face Hub            SciTok tokenizer
phaedra      Phaedra_AE_FSQ_4x4 (camlab-ethz/Phaedra)   llingsch/phaedra                        PhaedraTokenizer
                                                        tokenizers/phaedra_4x4/model.safetensors  (paper_parity)
ae_fsq       AE_FSQ, the paper's FSQ baseline           llingsch/phaedra                        PhaedraTokenizer
                                                        tokenizers/fsq/model.safetensors          (amp_levels None)
llamagen_vq  VQ-16 (FoundationVision/LlamaGen)          FoundationVision/LlamaGen               SVQVAE
                                                        vq_ds16_c2i.pt ({"model": state_dict})    (level_attention)

By default each takes and returns data as the released model does, so its outputs compare with the reference's
directly: Phaedra one normalized variable per call (x' = (x − mean)/(std + 1e-6) with per-dataset statistics, which
do not travel with the weights) and tokens {"morph", "amp"}; LlamaGen pixels in [-1, 1], one stream "tokens".
`options` override arguments of the SciTok tokenizer that is built (`pixel_range=(0, 1)` feeds VQ-16 SciTok's [0, 1]
images). `config` is the released hyper-parameters (a dict, or a JSON/YAML file, in the released nesting); default:
the full-size released model's (FULL_CONFIGS). `weights` is a local file or `hf://<owner>/<repo>/<path in repo>`,
fetched with huggingface_hub when online. Torch files are read with weights_only=True.

Key mapping, released module -> SciTok module (key_table expands it for a given architecture):

    Phaedra (taming-VQGAN names)          LlamaGen VQ-16                        SciTok
    encoder.conv_in                       encoder.conv_in                       encoder.conv_in
    encoder.down.{i}.block.{j}            encoder.conv_blocks.{i}.res.{j}       j-th ResBlock of encoder.levels.{2i}
    encoder.down.{i}.attn.{j}             encoder.conv_blocks.{i}.attn.{j}      j-th AttnBlock of encoder.levels.{2i}
    encoder.down.{i}.downsample           encoder.conv_blocks.{i}.downsample    encoder.levels.{2i+1}
    encoder.mid.block_1, attn_1, block_2  encoder.mid.0, 1, 2                   encoder.mid.0, 1, 2
    encoder.norm_out, conv_out            encoder.norm_out, conv_out            encoder.out.0, out.2
    decoder.conv_in, mid.*                decoder.conv_in, mid.*                decoder.conv_in, mid.0, 1, 2
    decoder.up.{n-1-p}.block/attn.{j}     decoder.conv_blocks.{p}.res/attn.{j}  j-th block of decoder.levels.{2p}
    decoder.up.{n-1-p}.upsample           decoder.conv_blocks.{p}.upsample      decoder.levels.{2p+1}
    decoder.norm_out, conv_out            decoder.norm_out, conv_out            decoder.out.0, out.2
    quant_conv, post_quant_conv           quant_conv, post_quant_conv           quant_conv, post_quant_conv
                                          quantize.embedding.weight             vq.codebook
                                          quantize.codebook_used                not loaded (training-time usage)
    in a ResBlock:   norm1 -> body.0, conv1 -> body.2, norm2 -> body.3, conv2 -> body.6, nin_shortcut -> skip
    in an AttnBlock: norm -> norm, q | k | v -> qkv (stacked along the output channels in that order), proj_out -> out
(p counts SciTok's decoder levels from the lowest resolution, as LlamaGen does; Phaedra's decoder counts from the
highest.) SciTok's vq.hits and vq.calls (dead-code bookkeeping) start at zero. The released FSQ is the tan/(1−ε) one
(`paper_parity=True`: 1022 of the 1024 amplitude levels reachable).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from tokenizers.base import DataMetadata, check_tokenizer
from tokenizers.blocks import AttnBlock, ResBlock
from tokenizers.load import UNREADABLE, build, read_checkpoint
from tokenizers.phaedra import PhaedraTokenizer
from tokenizers.svqvae import SVQVAE

# ---- the released models ------------------------------------------------------------------------------------------

_PHAEDRA_VAE = {
    "input_channels": 1,
    "encoder_channel_mult": [2, 2, 4],
    "decoder_channel_mult": [2, 2, 4],
    "num_res_blocks": 4,
    "attn_resolutions": [16, 32],
    "input_h": 128,
    "input_w": 128,
    "latent_channels": 128,
    "dropout": 0.0,
    "double_z": False,
}
# the hyper-parameters that built the full-size released models (camlab-ethz/Phaedra@d37a3eb tokenizer/configs/,
# FoundationVision/LlamaGen@ce98ec4 VQ_16 with the Encoder/Decoder defaults that ModelArgs does not carry)
FULL_CONFIGS: dict[str, dict] = {
    "phaedra": {
        "var_tokenizer_hyperparameters": {
            "vae_hyperparameters": _PHAEDRA_VAE,
            "fsq_hyperparameters": {"fsq_L": [5, 4, 4, 3, 3, 3, 2, 2], "codebook_embed_dim": 9, "fsq_scale": 10.0},
            "ct_hyperparameters": {"quantizer": "FSQ", "continuous_scale": 0.1, "continuous_L": 1024},
            "conv_hyperparameters": {"quant_conv_ks": 3},
        }
    },
    "ae_fsq": {
        "var_tokenizer_hyperparameters": {
            "vae_hyperparameters": _PHAEDRA_VAE,
            "fsq_hyperparameters": {"levels": [5, 4, 4, 3, 3, 3, 2, 2], "fsq_scale": 10.0, "codebook_embed_dim": 8},
            "conv_hyperparameters": {"quant_conv_ks": 3},
        }
    },
    "llamagen_vq": {
        "ModelArgs": {
            "codebook_size": 16384,
            "codebook_embed_dim": 8,
            "codebook_l2_norm": True,
            "commit_loss_beta": 0.25,
            "encoder_ch_mult": [1, 1, 2, 2, 4],
            "decoder_ch_mult": [1, 1, 2, 2, 4],
            "z_channels": 256,
            "dropout_p": 0.0,
        },
        "encoder_decoder_module_args": {"ch": 128, "num_res_blocks": 2, "in_channels": 3, "out_channels": 3},
    },
}


@dataclass(frozen=True)
class Release:
    family: str  # "phaedra" (taming-VQGAN key names) or "llamagen"
    description: str
    hub_repo: str
    hub_file: str

    def download_hint(self, local_dir: str = "weights") -> str:
        return (
            f"the published file: `hf download {self.hub_repo} {self.hub_file} --local-dir {local_dir}` "
            f"(pip install huggingface_hub; it lands in {local_dir}/{self.hub_file})"
        )


RELEASES: dict[str, Release] = {
    "phaedra": Release("phaedra", "Phaedra_AE_FSQ_4x4", "llingsch/phaedra", "tokenizers/phaedra_4x4/model.safetensors"),
    "ae_fsq": Release(
        "phaedra", "Phaedra's FSQ baseline AE_FSQ", "llingsch/phaedra", "tokenizers/fsq/model.safetensors"
    ),
    "llamagen_vq": Release("llamagen", "LlamaGen VQ-16", "FoundationVision/LlamaGen", "vq_ds16_c2i.pt"),
}


def _section(config: Mapping, *path: str) -> Mapping:
    for key in path:
        if not isinstance(config, Mapping) or key not in config:
            raise ValueError(f"the released config has no {'.'.join(path)} (it has {sorted(config)})")
        config = config[key]
    return config


def _same(a: Any, b: Any, what: str) -> None:
    if list(a) != list(b):
        raise ValueError(
            f"SciTok builds encoders and decoders of equal shape; the released config's {what}: {a} != {b}"
        )


def phaedra_spec(kind: str, config: Mapping) -> dict:
    """The PhaedraTokenizer spec ({"_target_": …, **kwargs}) of a released Phaedra / AE_FSQ config."""
    hp = _section(config, "var_tokenizer_hyperparameters")
    vae, fsq = _section(hp, "vae_hyperparameters"), _section(hp, "fsq_hyperparameters")
    _same(vae["encoder_channel_mult"], vae["decoder_channel_mult"], "encoder/decoder_channel_mult")
    if vae.get("double_z"):
        raise ValueError(
            "the released config has double_z: true (a VAE's mean and variance); SciTok has no such latent"
        )
    if vae["input_h"] != vae["input_w"]:
        raise ValueError(f"attention placement needs one training resolution, got {vae['input_h']}×{vae['input_w']}")
    levels = list(fsq.get("fsq_L", fsq.get("levels", [])))
    spec = {
        "_target_": "tokenizers.phaedra.PhaedraTokenizer",
        "in_channels": int(vae["input_channels"]),
        "ch": int(vae["latent_channels"]),
        "ch_mult": list(vae["encoder_channel_mult"]),
        "num_res_blocks": int(vae["num_res_blocks"]),
        "attn_resolutions": list(vae["attn_resolutions"]),
        "resolution": int(vae["input_h"]),
        "dropout": float(vae.get("dropout", 0.0)),
        "norm_groups": 32,
        "morph_levels": levels,
        "morph_gain": float(fsq["fsq_scale"]),
        "amp_levels": None,
        "paper_parity": True,
        "quant_conv_kernel": int(_section(hp, "conv_hyperparameters")["quant_conv_ks"]),
    }
    if kind == "phaedra":
        ct = _section(hp, "ct_hyperparameters")
        if ct.get("quantizer", "FSQ") != "FSQ":
            raise ValueError(f"SciTok loads Phaedra with an FSQ amplitude quantizer, the config has {ct['quantizer']}")
        spec.update(amp_levels=int(ct["continuous_L"]), amp_gain=float(ct["continuous_scale"]))
    latent = len(levels) + (kind == "phaedra")
    if int(fsq.get("codebook_embed_dim", latent)) != latent:
        raise ValueError(f"codebook_embed_dim {fsq['codebook_embed_dim']} != the {latent} quantized latent channels")
    return spec


def llamagen_spec(kind: str, config: Mapping) -> dict:
    """The SVQVAE spec of a released LlamaGen VQ config (ModelArgs + the Encoder/Decoder arguments)."""
    args = _section(config, "ModelArgs")
    # the released listing calls the Encoder/Decoder arguments *_defaults, the fixture *_args
    module = config.get("encoder_decoder_module_args", config.get("encoder_decoder_module_defaults", {}))
    _same(args["encoder_ch_mult"], args["decoder_ch_mult"], "encoder/decoder_ch_mult")
    if not args.get("codebook_l2_norm", True):
        raise ValueError(
            "SciTok's SVQVAE looks codes up by cosine similarity; codebook_l2_norm: false is not supported"
        )
    if module.get("norm_type", "group") != "group" or not module.get("resamp_with_conv", True):
        raise ValueError(
            "SciTok's SVQVAE has GroupNorm and convolutional resampling (norm_type group, resamp_with_conv)"
        )
    if module.get("in_channels", 3) != module.get("out_channels", 3):
        raise ValueError(f"in_channels {module['in_channels']} != out_channels {module['out_channels']}")
    return {
        "_target_": "tokenizers.svqvae.SVQVAE",
        "in_channels": int(module.get("in_channels", 3)),
        "ch": int(module.get("ch", 128)),
        "ch_mult": list(args["encoder_ch_mult"]),
        "num_res_blocks": int(module.get("num_res_blocks", 2)),
        "z_channels": int(args["z_channels"]),
        "embed_dim": int(args["codebook_embed_dim"]),
        "codebook_size": int(args["codebook_size"]),
        "beta": float(args.get("commit_loss_beta", 0.25)),
        "dropout": float(args.get("dropout_p", 0.0)),
        "norm_groups": 32,
        "level_attention": True,
        "pixel_range": [-1.0, 1.0],
        "net_range": [-1.0, 1.0],
    }


SPECS = {"phaedra": phaedra_spec, "ae_fsq": phaedra_spec, "llamagen_vq": llamagen_spec}


def released_metadata(kind: str, spec: Mapping) -> DataMetadata:
    """What the released model's inputs are, stated where load_tokenizer users read it (`tokenizer.metadata`)."""
    release = RELEASES[kind]
    if release.family == "phaedra":
        return DataMetadata(
            kind="fields",
            normalization="standardize",
            source=f"{release.description} ({release.hub_repo}, {release.hub_file}): one variable per call, "
            "x' = (x − mean)/(std + 1e-6) with per-dataset, per-variable statistics, which the weights do not carry "
            "(evaluate.py / encode.py: normalize=data)",
        )
    lo, hi = spec["pixel_range"]
    return DataMetadata(
        kind="images",
        normalization="unit_range" if (lo, hi) == (0.0, 1.0) else "symmetric_range",
        variables=["red", "green", "blue"],
        source=f"{release.description} ({release.hub_repo}, {release.hub_file}): RGB pixels, the network works in "
        f"[-1, 1] (2·x/255 − 1); this tokenizer takes and returns [{lo:g}, {hi:g}]",
    )


# ---- the key table ------------------------------------------------------------------------------------------------

RESBLOCK = {"norm1": "body.0", "conv1": "body.2", "norm2": "body.3", "conv2": "body.6", "nin_shortcut": "skip"}
ATTENTION = {"norm": "norm", "q": "qkv", "k": "qkv", "v": "qkv", "proj_out": "out"}
QKV = ("q", "k", "v")
# released tensors that nothing in SciTok reads, and SciTok tensors that no released file holds
NOT_LOADED = {"llamagen": {"quantize.codebook_used": "LlamaGen's training-time codebook usage ring buffer"}}
NOT_IN_FILE = {"llamagen": ("vq.hits", "vq.calls")}

_NAMES = {  # module names of the released code: {encoder level, decoder level, res block, attention, mid}
    "phaedra": {"down": "down", "up": "up", "res": "block", "attn": "attn", "mid": ("block_1", "attn_1", "block_2")},
    "llamagen": {"down": "conv_blocks", "up": "conv_blocks", "res": "res", "attn": "attn", "mid": ("0", "1", "2")},
}


@dataclass(frozen=True)
class Row:
    """One released tensor: the SciTok tensor it becomes, and which of `of` stacked parts it is (q, k, v)."""

    target: str
    part: int = 0
    of: int = 1


def _stage_blocks(stage: nn.Module) -> Iterator[tuple[str, int, str, nn.Module]]:
    """(kind "res"/"attn", index among its kind, SciTok position, module) of a level's Sequential."""
    counts = {"res": 0, "attn": 0}
    for position, block in stage.named_children():
        kind = "res" if isinstance(block, ResBlock) else "attn"
        yield kind, counts[kind], position, block
        counts[kind] += 1


def _block_rows(released: str, scitok: str, block: nn.Module) -> dict[str, Row]:
    """Every tensor of one block: weight and bias of each of its convolutions and norms."""
    rows = {}
    if isinstance(block, ResBlock):
        parts = {k: v for k, v in RESBLOCK.items() if k != "nin_shortcut" or isinstance(block.skip, nn.Conv2d)}
    elif isinstance(block, AttnBlock):
        parts = ATTENTION
    else:  # a plain convolution / norm, or a Down/Upsample (its conv)
        parts = {"conv": "conv"} if hasattr(block, "conv") else {"": ""}
    for name, target in parts.items():
        for tensor in ("weight", "bias"):
            key = ".".join(p for p in (released, name, tensor) if p)
            part = QKV.index(name) if name in QKV else 0
            rows[key] = Row(".".join(p for p in (scitok, target, tensor) if p), part, 3 if name in QKV else 1)
    return rows


def key_table(family: str, tokenizer: nn.Module) -> dict[str, Row]:
    """released key -> Row, for every tensor the released file of `family` holds for `tokenizer`'s architecture
    (the table in the module docstring, expanded)."""
    names, rows = _NAMES[family], {}
    for side in ("encoder", "decoder"):
        coder = getattr(tokenizer, side)
        rows |= _block_rows(f"{side}.conv_in", f"{side}.conv_in", coder.conv_in)
        for name, (position, block) in zip(names["mid"], coder.mid.named_children(), strict=True):
            rows |= _block_rows(f"{side}.mid.{name}", f"{side}.mid.{position}", block)
        rows |= _block_rows(f"{side}.norm_out", f"{side}.out.0", coder.out[0])
        rows |= _block_rows(f"{side}.conv_out", f"{side}.out.2", coder.out[2])
        levels = list(coder.levels)
        n = (len(levels) + 1) // 2
        for p in range(n):  # SciTok's p-th level in the order the data passes it
            # the released level: the encoder's and LlamaGen's decoder's count the same way, Phaedra's decoder from
            # the highest resolution (its list is built in reverse)
            i = n - 1 - p if (side == "decoder" and family == "phaedra") else p
            level = f"{side}.{names['down' if side == 'encoder' else 'up']}.{i}"
            for kind, j, position, block in _stage_blocks(levels[2 * p]):
                rows |= _block_rows(f"{level}.{names[kind]}.{j}", f"{side}.levels.{2 * p}.{position}", block)
            if p < n - 1:
                resample = "downsample" if side == "encoder" else "upsample"
                rows |= _block_rows(f"{level}.{resample}", f"{side}.levels.{2 * p + 1}", levels[2 * p + 1])
    rows |= _block_rows("quant_conv", "quant_conv", tokenizer.quant_conv)
    rows |= _block_rows("post_quant_conv", "post_quant_conv", tokenizer.post_quant_conv)
    if family == "llamagen":
        rows["quantize.embedding.weight"] = Row("vq.codebook")
    return rows


def family_of(state: Mapping[str, Any]) -> str | None:
    """ "phaedra" or "llamagen" by the key names of a state dict, or None for neither."""
    if any(k.startswith("encoder.down.") for k in state):
        return "phaedra"
    if any(k.startswith("encoder.conv_blocks.") for k in state):
        return "llamagen"
    return None


def convert(state: Mapping[str, torch.Tensor], tokenizer: nn.Module, source: str = "the weights") -> dict:
    """A released state dict -> `tokenizer`'s state dict (every key of it: the few that no file holds, vq.hits and
    vq.calls, as the tokenizer has them). Raises ValueError naming `source` and the keys if the file holds a tensor
    the table has no row for, lacks one it needs, or a shape differs from the tokenizer's (its config differs from
    the file's). Works on meta tensors (shapes only)."""
    family = "llamagen" if isinstance(tokenizer, SVQVAE) else "phaedra"
    table, ignored = key_table(family, tokenizer), NOT_LOADED.get(family, {})
    unknown = sorted(set(state) - set(table) - set(ignored))
    missing = sorted(set(table) - set(state))
    if unknown or missing:
        raise ValueError(
            f"{source} does not hold the tensors of this {type(tokenizer).__name__}: "
            + (f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"{len(unknown)} not in the released layout (e.g. {unknown[:3]})" if unknown else "")
            + ". Is the config the file's? (config=…; the default is the full-size released model)"
        )
    target = tokenizer.state_dict()
    stacked: dict[str, list] = {}
    for key, row in table.items():
        stacked.setdefault(row.target, [None] * row.of)[row.part] = state[key]
    out = {}
    for name, parts in stacked.items():
        value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if name not in target or tuple(value.shape) != tuple(target[name].shape):
            released = [k for k, r in table.items() if r.target == name]
            raise ValueError(
                f"{source}: {released[0]}{' (+ k, v)' if len(parts) > 1 else ''} has shape {tuple(value.shape)}, this "
                f"{type(tokenizer).__name__} expects {tuple(target[name].shape)} for {name}: the file was made with "
                "another configuration; give its config (load_released's config=…, or a run's model.tokenizer.*)"
            )
        out[name] = value.to(target[name].dtype)
    left = set(target) - set(out) - set(NOT_IN_FILE.get(family, ()))
    if left:  # a row of the table is missing: a SciTok tensor would keep its random initialization
        raise AssertionError(f"the key table leaves {sorted(left)[:5]} of {type(tokenizer).__name__} unset")
    return {name: out.get(name, value) for name, value in target.items()}


# ---- files --------------------------------------------------------------------------------------------------------


def fetch(weights: str | Path, kind: str | None = None) -> Path:
    """A local path, or `hf://<owner>/<repo>/<path>` downloaded to the Hugging Face cache (needs the network);
    errors name the file and how to get it."""
    text = str(weights)
    hint = RELEASES[kind].download_hint() if kind in RELEASES else ""
    if not text.startswith("hf://"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"released weights {path} do not exist" + (f"; {hint}" if hint else ""))
        return path
    parts = text[len("hf://") :].split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{text}: a Hub path is hf://<owner>/<repo>/<path of the file in the repo>")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # offline (LocalEntryNotFoundError), no such repo/file, no access: one message for all
        raise FileNotFoundError(
            f"cannot fetch {text} ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}): offline, "
            f"or no such file. On a machine with network: `hf download {repo} {filename} --local-dir weights`, "
            f"then pass weights/{filename}"
        ) from e


class SciTokCheckpointGiven(ValueError):
    """A SciTok checkpoint where released weights were expected."""


def read_state(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """The state dict of a released file: safetensors, or a torch file (read with weights_only=True) holding
    {"ema" | "model" | "state_dict": state_dict} (LlamaGen's vq_demo prefers them in that order) or the state dict.
    Errors name the file and what it holds instead."""
    if path.stat().st_size == 0:
        raise ValueError(f"released weights {path} are empty (0 bytes): a download that never finished")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":  # torch.save's zip archive
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{path} holds Python objects besides tensors (LlamaGen training checkpoints keep an argparse `args`, "
                "optimizer and discriminator): SciTok reads weights only. Where you trust the file, save its weights "
                "alone: torch.save({'model': torch.load(path, weights_only=False)['model']}, 'vq.pt')"
            ) from e
        except UNREADABLE as e:
            raise ValueError(f"{path} cannot be read as a torch file ({type(e).__name__}): truncated or corrupt") from e
        if isinstance(obj, dict) and "hyper_parameters" in obj and "state_dict" in obj:
            raise SciTokCheckpointGiven(
                f"{path} is a SciTok (Lightning) checkpoint, not released {kind} weights: load it with "
                "tokenizers.load_tokenizer (or pass it as model.init_from / ckpt= directly)"
            )
        for key in ("ema", "model", "state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(
                f"{path} cannot be read as safetensors ({e}): truncated (an interrupted download?) or not a "
                f"weights file; released {kind} weights are {RELEASES[kind].hub_file}"
            ) from e
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors (found {type(obj).__name__}: {sorted(obj)[:5]})")
    return dict(obj)


def read_config(config: Mapping | str | Path | None, kind: str) -> dict:
    if config is None:
        return FULL_CONFIGS[kind]
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"released config {path} does not exist")
    loaded = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"released config {path} is not a mapping")
    return loaded


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_kind(state: Mapping, kind: str, path: Path) -> None:
    family = family_of(state)
    wanted = RELEASES[kind].family
    if family == wanted:
        return
    names = {"phaedra": "Phaedra / AE_FSQ (kind 'phaedra' or 'ae_fsq')", "llamagen": "LlamaGen VQ (kind 'llamagen_vq')"}
    holds = f"holds {names[family]} weights" if family else f"holds none of the released layouts ({sorted(state)[:3]})"
    raise ValueError(f"{path} {holds}, not {RELEASES[kind].description} ({kind!r})")


def load_released(
    kind: str, weights: str | Path, config: Mapping | str | Path | None = None, **options: Any
) -> nn.Module:
    """Released weights as a SciTok tokenizer in eval mode (see the module docstring). The tokenizer has
    `.metadata` (DataMetadata stating the released input convention), `.spec` (the plain config that builds it, for
    save_tokenizer) and `.released` ({kind, file, sha256})."""
    if kind not in RELEASES:
        raise ValueError(f"unknown released kind {kind!r}; SciTok loads {sorted(RELEASES)}")
    path = fetch(weights, kind)
    state = read_state(path, kind)
    _check_kind(state, kind, path)
    spec = {**SPECS[kind](kind, read_config(config, kind)), **options}
    tokenizer = build(spec, source=f"the spec of released {kind}")
    check_tokenizer(tokenizer)
    tokenizer.load_state_dict(convert(state, tokenizer, source=str(path)))
    tokenizer.spec, tokenizer.metadata = spec, released_metadata(kind, spec)
    tokenizer.released = {"kind": kind, "file": str(path), "sha256": sha256(path)}
    return tokenizer.eval()


def initial_weights(tokenizer: nn.Module, path: str | Path) -> tuple[dict, str]:
    """What `model.init_from=path` starts `tokenizer` from: (its state dict, the DataMetadata.source of the run).
    The weights are a SciTok checkpoint's tokenizer weights, or released weights converted to it (the kind follows
    from the tokenizer: Phaedra / AE_FSQ for a PhaedraTokenizer, LlamaGen VQ for an SVQVAE); the source names the
    file, its sha256 and the input convention of those weights. Raises naming the file when it does not fit."""
    amp = "amp" in getattr(tokenizer, "streams", {})
    kind = released_kind(type(tokenizer), {} if amp else {"amp_levels": None})
    file = fetch(path, kind)
    start = f"fine-tuned from {path} (sha256 {sha256(file)})"
    try:
        state = read_state(file, kind or "phaedra")
    except SciTokCheckpointGiven:
        ckpt = read_checkpoint(file)
        weights = {k.removeprefix("tokenizer."): v for k, v in ckpt["state_dict"].items() if k.startswith("tokenizer.")}
        if "data" not in ckpt:
            return weights, f"{start}: a SciTok checkpoint without data metadata"
        held = DataMetadata.from_dict(ckpt["data"])
        its_source = f" (its source: {held.source})" if held.source else ""
        return (
            weights,
            f"{start}: a SciTok checkpoint trained on {held.kind} data, normalization {held.normalization}"
            + its_source,
        )
    if kind is None:
        raise ValueError(
            f"{file}: released weights load into PhaedraTokenizer or SVQVAE, not {type(tokenizer).__name__}"
        )
    _check_kind(state, kind, file)
    # the released model's convention, stated with this tokenizer's pixel range (LlamaGen's network works in [-1, 1]
    # whatever the images are); Phaedra's reads none
    convention = released_metadata(kind, {"pixel_range": getattr(tokenizer, "pixel_range", None)}).source
    return convert(state, tokenizer, source=str(file)), f"{start}: {convention}"


def released_kind(tokenizer_class: type, spec: Mapping) -> str | None:
    """The released kind whose weights a tokenizer of this class, built with `spec` (its keyword arguments), takes:
    "ae_fsq" for a PhaedraTokenizer with amp_levels None, "phaedra" for another, "llamagen_vq" for an SVQVAE; None
    for other tokenizers (they start only from SciTok checkpoints). Read from the config, before anything is built
    (train.py's model.init_from check)."""
    if issubclass(tokenizer_class, SVQVAE):
        return "llamagen_vq"
    if issubclass(tokenizer_class, PhaedraTokenizer):
        return "ae_fsq" if "amp_levels" in spec and spec["amp_levels"] is None else "phaedra"
    return None


def main(argv: list[str] | None = None) -> Path:
    """`python -m tokenizers released KIND WEIGHTS [--config C] [--out X.ckpt] [--pixel-range 0 1]`: released
    weights -> a SciTok tokenizer checkpoint that encode.py, evaluate.py and load_tokenizer take like any other."""
    import argparse

    from tokenizers.load import save_tokenizer

    parser = argparse.ArgumentParser(prog="python -m tokenizers released", description=main.__doc__)
    parser.add_argument("kind", choices=sorted(RELEASES))
    parser.add_argument("weights", help="a local file or hf://<owner>/<repo>/<path>")
    parser.add_argument("--config", default=None, help="the released config (JSON/YAML); default: the full-size one")
    parser.add_argument("--out", default=None, help="default: <weights folder>/<kind>.ckpt")
    parser.add_argument("--pixel-range", type=float, nargs=2, default=None, help="llamagen_vq: e.g. 0 1 for [0, 1]")
    args = parser.parse_args(argv)
    options = {"pixel_range": args.pixel_range} if args.pixel_range else {}
    tokenizer = load_released(args.kind, args.weights, args.config, **options)
    out = Path(args.out) if args.out else Path(tokenizer.released["file"]).with_name(f"{args.kind}.ckpt")
    save_tokenizer(tokenizer, tokenizer.spec, tokenizer.metadata, out)
    print(f"wrote {out} ({tokenizer.released['kind']}, sha256 {tokenizer.released['sha256'][:12]}…)")
    return out
