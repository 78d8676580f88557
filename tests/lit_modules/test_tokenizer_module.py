import pytest
import torch

from datamodules.adapters import FieldAdapter
from lit_modules.tokenizer_module import TokenizerModule

TOKENIZER = {
    "_target_": "tokenizers.phaedra.PhaedraTokenizer",
    "ch": 16,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "resolution": 16,
}
OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
SCHED = {"_target_": "lit_modules.schedulers.constant", "_partial_": True}


class NotATokenizer(torch.nn.Module):
    """Has a forward but neither streams, encode, decode nor code_vectors."""

    def forward(self, x):
        return x


def test_hyperparameters_are_plain_and_the_loss_defaults_to_l1_plus_mse():
    module = TokenizerModule(TOKENIZER, OPTIM, SCHED)
    assert dict(module.hparams)["tokenizer"] == TOKENIZER
    assert module.loss.weights == {"l1": 1.0, "mse": 1.0} and module.loss.discriminator is None


def test_a_module_that_breaks_the_tokenizer_protocol_is_refused_naming_what_it_lacks():
    with pytest.raises(
        TypeError,
        match=r"NotATokenizer does not follow the Tokenizer protocol .*"
        r"missing streams, encode, decode, code_vectors",
    ):
        TokenizerModule({"_target_": "tests.lit_modules.test_tokenizer_module.NotATokenizer"}, OPTIM, SCHED)
    with pytest.raises(TypeError, match="missing .*forward"):  # nn.Module's forward only raises
        TokenizerModule({"_target_": "torch.nn.Module"}, OPTIM, SCHED)
    gan = {
        "start_step": 0,
        "adaptive_weight": True,
        "discriminator": {"_target_": "tokenizers.discriminator.PatchGAN", "in_channels": 1, "ch": 8},
    }
    with pytest.raises(ValueError, match="adaptive_weight needs a tokenizer with a `last_layer`; EEGTokenizer"):
        TokenizerModule(
            {"_target_": "tokenizers.eeg.EEGTokenizer"},
            OPTIM,
            SCHED,
            loss={"_target_": "lit_modules.losses.ReconstructionLoss", "gan": gan},
        )


def test_the_field_adapter_targets_the_normalized_field():
    raw = torch.randn(2, 1, 16, 16) * 3 + 5
    batch = {
        "field_variables_in": (raw - 5) / 3,
        "field_variables_out": raw,
        "field_variables_in_mean": torch.full((2, 1), 5.0),
        "field_variables_in_std": torch.full((2, 1), 3.0),
    }
    example = FieldAdapter().unpack(batch)
    assert example.cond == {} and example.x is batch["field_variables_in"]
    assert torch.allclose(example.target, example.x)


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_one_intact(tmp_path, monkeypatch, make_cfg):
    """A full disk (ENOSPC) while writing last.ckpt: the previous last.ckpt still loads, no partial file is left,
    and the error names the checkpoint. Every trainer built from the config writes this way."""
    import errno

    from hydra.utils import instantiate

    import lit_modules.checkpoint_io as checkpoint_io

    io = checkpoint_io.AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    def disk_full(obj, f):
        f.write(b"\x80\x02partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    with pytest.raises(
        OSError,
        match=r"writing checkpoint .*last.ckpt failed \(No space left on device\); the "
        r"previous last.ckpt, if any, is unchanged",
    ):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    cfg = make_cfg(["debug=fast", "logger=none"])
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer.strategy.checkpoint_io, checkpoint_io.AtomicCheckpointIO)


def test_counting_training_flops_changes_nothing_and_counts_the_convolutions():
    """The FLOP count runs on a copy with the RNG state restored (a resumed run must see the state an uninterrupted
    one does). Its count: 2·(multiply-adds) of every conv/matmul forward, about twice that backward."""
    from datamodules.adapters import ModelInput

    torch.manual_seed(0)
    module = TokenizerModule(TOKENIZER, OPTIM, SCHED)
    x = torch.randn(1, 1, 16, 16)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    flops = module.training_flops(ModelInput(x=x, cond={}, target=x))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in module.parameters())
    first = module.tokenizer.encoder.conv_in  # 3×3, 1 → 16 channels at 16×16: forward 2·16·16·16·9 FLOPs
    forward_first = 2 * 16 * 16 * first.out_channels * first.in_channels * 9
    assert flops > 3 * forward_first  # every layer forward and backward, this one among them


@pytest.mark.parametrize("channels_last", [False, True])
def test_flop_count_includes_attention_in_either_memory_format(channels_last):
    """SDPA takes the math path (bmm) for strided q/k/v and the CPU flash kernel for contiguous ones (as channels_last
    activations give); torch's counter knows only the first, flop_counter() both: forward = the 1×1 convs +
    2·HW·HW·C for the scores and again for the weighted sum, either way."""
    from lit_modules.tokenizer_module import flop_counter
    from tokenizers.blocks import AttnBlock

    C, H, W = 32, 8, 4
    block = AttnBlock(C)
    x = torch.randn(1, C, H, W)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with flop_counter() as counter:
        block(x)
    convs = 2 * H * W * C * (3 * C) + 2 * H * W * C * C
    assert counter.get_total_flops() == convs + 2 * (2 * (H * W) ** 2 * C)
    with flop_counter() as counter:
        block(x.requires_grad_()).sum().backward()
    # backward: the gradients of both operands of every product (the flash kernel also recomputes the scores)
    assert counter.get_total_flops() >= 3 * (convs + 2 * (2 * (H * W) ** 2 * C))


def test_channels_last_puts_weights_and_image_batches_in_nhwc_with_the_same_values():
    """model.channels_last=true: NHWC weights and inputs; the encoder and decoder compute the same values (float32
    rounding: other kernels). Inputs that are not images (EEG rows) pass unchanged."""
    from tests.helpers import f32_tolerance, layer_depth

    torch.manual_seed(0)
    plain_module = TokenizerModule(TOKENIZER, OPTIM, SCHED)
    nhwc = TokenizerModule(TOKENIZER, OPTIM, SCHED, channels_last=True)
    nhwc.load_state_dict(plain_module.state_dict())
    assert dict(nhwc.hparams)["channels_last"] is True
    assert nhwc.tokenizer.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 16, 16)
    assert plain_module.model_input(x) is x
    assert nhwc.model_input(x).is_contiguous(memory_format=torch.channels_last)
    rows = torch.randn(2, 3, 5)
    assert nhwc.model_input(rows) is rows
    with torch.no_grad():
        z = torch.randn(2, plain_module.tokenizer.decoder.conv_in.in_channels, 8, 8)
        for part, inp in (("encoder", x), ("decoder", z)):
            ref = getattr(plain_module.tokenizer, part)(inp)
            got = getattr(nhwc.tokenizer, part)(nhwc.model_input(inp))
            assert torch.allclose(got, ref, rtol=0, atol=f32_tolerance(ref, layer_depth(getattr(nhwc.tokenizer, part))))


def lightning_checkpoint(path, module: TokenizerModule, **hparams) -> str:
    """What ModelCheckpoint writes, as far as load_from_checkpoint reads it; `hparams` replace hyper-parameters."""
    import lightning as L

    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": {**dict(module.hparams), **hparams},
        "pytorch-lightning_version": L.__version__,
    }
    torch.save(ckpt, path)
    return str(path)


def test_load_from_checkpoint_builds_a_checkpoint_of_our_own_classes(tmp_path):
    module = TokenizerModule(TOKENIZER, OPTIM, SCHED)
    loaded = TokenizerModule.load_from_checkpoint(lightning_checkpoint(tmp_path / "ok.ckpt", module))
    for name, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name


def test_load_from_checkpoint_refuses_a_checkpoint_that_would_run_code(tmp_path):
    import sys

    from tokenizers.load import UnsafeTargetError

    marker = tmp_path / "pwned"
    payload = {"_target_": "subprocess.run", "args": [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]}
    module = TokenizerModule(TOKENIZER, OPTIM, SCHED)
    loss = {"_target_": "lit_modules.losses.ReconstructionLoss", "gan": {"discriminator": payload}}
    cases = {
        "optimizer": ({"optimizer": payload}, "names _target_ 'subprocess.run'"),
        "nested in the loss": ({"loss": loss}, "names _target_ 'subprocess.run'"),
        # Hydra resolves interpolations before it instantiates: this one would build the payload after any check
        "interpolation": ({"tokenizer": {**TOKENIZER, "ch": "${oc.create:{_target_: subprocess.run}}"}}, "interpol"),
    }
    for name, (hparams, error) in cases.items():
        path = lightning_checkpoint(tmp_path / "evil.ckpt", module, **hparams)
        with pytest.raises(UnsafeTargetError, match=rf"evil\.ckpt .*{error}"):
            TokenizerModule.load_from_checkpoint(path)
        assert not marker.exists(), name
    # the legacy key Lightning still reads its hyper-parameters from
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {}, "hparams": {"tokenizer": payload, "optimizer": {}, "scheduler": {}}}, legacy)
    with pytest.raises(UnsafeTargetError, match=r"legacy\.ckpt names _target_ 'subprocess.run'"):
        TokenizerModule.load_from_checkpoint(legacy)
    ok = lightning_checkpoint(tmp_path / "ok.ckpt", module)
    (tmp_path / "evil.yaml").write_text(f"scheduler:\n  _target_: os.system\n  command: touch {marker}\n")
    (tmp_path / "evil.csv").write_text(
        f"key,value\nscheduler,\"{{'_target_': 'os.system', 'command': 'touch {marker}'}}\"\n"
    )
    for hparams_file in ("evil.yaml", "evil.csv"):  # each read as Lightning reads it
        with pytest.raises(UnsafeTargetError, match=rf"hparams_file .*{hparams_file} names _target_ 'os.system'"):
            TokenizerModule.load_from_checkpoint(ok, hparams_file=tmp_path / hparams_file)
    assert not marker.exists()
