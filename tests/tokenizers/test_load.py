"""Checkpoints are data, never code: load_tokenizer builds only SciTok's own tokenizer classes, whatever the file
says, and refuses anything else before importing or calling it; save_tokenizer writes only what it would load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tokenizers import FSQ, DataMetadata, load_tokenizer, save_tokenizer
from tokenizers.load import UnsafeTargetError, allowed_target, build


def checkpoint(path: Path, spec: dict) -> Path:
    """A file in TokenizerModule's checkpoint layout whose tokenizer spec is `spec`."""
    torch.save({"hyper_parameters": {"tokenizer": spec}, "state_dict": {}}, path)
    return path


def payloads(marker: Path) -> dict[str, dict]:
    """Specs that would create `marker` if anything in them were called."""
    python = sys.executable
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "subprocess": {"_target_": "subprocess.run", "args": [python, "-c", touch]},
        "os.system": {"_target_": "os.system", "command": f'{python} -c "{touch}"'},
        "check_call": {"_target_": "subprocess.check_call", "args": [python, "-c", touch]},
        # nested inside a legitimate tokenizer: the check runs before anything is built
        "nested": {
            "_target_": "tokenizers.fsq.FSQ",
            "levels": {"_target_": "subprocess.run", "args": [python, "-c", touch]},
        },
        # names that our own modules import, reached through them
        "through ours": {"_target_": "tokenizers.load.importlib.import_module", "name": "this_module_does_not_exist"},
        "imported into ours": {"_target_": "tokenizers.load.Path", "args": str(marker)},
        "not a module": {"_target_": "tokenizers.load.build", "spec": {}},
    }


@pytest.mark.parametrize("name", list(payloads(Path("x"))))
def test_a_malicious_checkpoint_is_refused_before_anything_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    path = checkpoint(tmp_path / "evil.ckpt", payloads(marker)[name])
    with pytest.raises(UnsafeTargetError, match=r"evil\.ckpt.*refuses to import or call") as err:
        load_tokenizer(path)
    spec = payloads(marker)[name]
    refused = spec["levels"]["_target_"] if name == "nested" else spec["_target_"]
    assert repr(refused) in str(err.value)  # the message names the target it refused
    assert not marker.exists()


def test_refused_targets_import_nothing_outside_the_package(monkeypatch):
    monkeypatch.delitem(sys.modules, "antigravity", raising=False)  # a module with a side effect on import
    with pytest.raises(UnsafeTargetError):
        allowed_target("antigravity.fly")
    with pytest.raises(UnsafeTargetError):
        allowed_target("tokenizers.nope.Missing")  # a module of ours that does not exist
    with pytest.raises(UnsafeTargetError):
        allowed_target(["not", "a", "name"])
    assert "antigravity" not in sys.modules


def test_our_tokenizer_classes_are_allowed_also_through_their_reexport():
    assert allowed_target("tokenizers.fsq.FSQ") is FSQ and allowed_target("tokenizers.FSQ") is FSQ
    assert isinstance(build({"_target_": "tokenizers.fsq.FSQ", "levels": [3]}), FSQ)


def spectrum_tokenizer() -> tuple[torch.nn.Module, dict]:
    spec = {"_target_": "tokenizers.astro.SpectrumTokenizer", "pixels": 16, "patch": 8, "codebook_size": 4}
    tokenizer = build(spec)
    for buffer in tokenizer.buffers():
        buffer.copy_(torch.randn(buffer.shape, generator=torch.Generator().manual_seed(buffer.numel())))
    return tokenizer, spec


def test_save_tokenizer_writes_what_load_tokenizer_reads(tmp_path):
    tokenizer, spec = spectrum_tokenizer()
    meta = DataMetadata(kind="galaxy_spectra", normalization="robust", variables=["flux"])
    path = save_tokenizer(tokenizer, spec, meta, tmp_path / "spectra.pt")
    assert path == tmp_path / "spectra.pt" and [p.name for p in tmp_path.iterdir()] == ["spectra.pt"]
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tokenizer) and not loaded.training and loaded.metadata == meta
    assert loaded.state_dict().keys() == tokenizer.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in tokenizer.state_dict().items())
    assert load_tokenizer(save_tokenizer(tokenizer, spec, None, tmp_path / "bare.pt")).metadata is None


@pytest.mark.parametrize("name", ["subprocess", "nested", "not a module"])
def test_save_tokenizer_refuses_a_spec_that_load_tokenizer_would_refuse(tmp_path, name):
    marker = tmp_path / "ran"
    tokenizer, _ = spectrum_tokenizer()
    with pytest.raises(UnsafeTargetError, match="refuses"):
        save_tokenizer(tokenizer, payloads(marker)[name], None, tmp_path / "t.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, nothing run


def test_save_tokenizer_refuses_a_spec_of_another_class(tmp_path):
    tokenizer, _ = spectrum_tokenizer()
    with pytest.raises(ValueError, match=r"builds tokenizers.fsq.FSQ, but the tokenizer is a .*SpectrumTokenizer"):
        save_tokenizer(tokenizer, {"_target_": "tokenizers.fsq.FSQ", "levels": [3]}, None, tmp_path / "t.pt")
    assert list(tmp_path.iterdir()) == []
