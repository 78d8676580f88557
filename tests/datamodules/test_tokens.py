"""Field pairs and EEG sequences for the transformer, read from the token stores of encode.py."""

import numpy as np
import pytest
import torch

from models import SPECIALS

# ---------------------------------------------------------------------------------------------------------------
# Field pairs and EEG sequences, encoded through the debug=fast tokenizer runs


def token_datamodule(experiment: str, ckpt, data_dir, output_dir, extra=()):
    from hydra.utils import instantiate

    from tests.helpers import compose_cfg

    cfg = compose_cfg(
        [f"experiment={experiment}", "debug=fast", f"data.tokenizer_ckpt={ckpt}", *extra], output_dir, data_dir
    )
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def fields(experiment_run, data_dir, tmp_path_factory):
    ckpt = experiment_run("phaedra").last_ckpt
    return token_datamodule("field_transformer", ckpt, data_dir, tmp_path_factory.mktemp("ft")), ckpt


def test_field_pairs_are_present_then_future_frame_cell_by_cell(fields):
    from tokenizers import load_tokenizer

    dm, ckpt = fields
    tokenizer = load_tokenizer(ckpt)
    BOS, SEP, EOS = (SPECIALS.index(s) for s in ("BOS", "SEP", "EOS"))
    morph, amp = dm.vocab.range("field", "morph"), dm.vocab.range("field", "amp")
    batch = dm.splits["val"].__getitems__([0, 1, 2])
    S = dm.max_len - 2  # grid cells
    frame = 2 * S
    ids = batch["ids"]
    assert ids.shape == (3, 2 * frame + 3)
    assert (ids[:, 0] == BOS).all() and (ids[:, frame + 1] == SEP).all() and (ids[:, -1] == EOS).all()
    # each cell: its morph token then its amp token, typed by stream; both frames at the cells' positions
    assert batch["types"][0, 1:5].tolist() == [morph.type_id, amp.type_id] * 2
    assert torch.equal(batch["positions"][0, 1 : frame + 1], batch["positions"][0, frame + 2 : -1])
    assert batch["positions"][0, 1:7].tolist() == [1, 1, 2, 2, 3, 3]
    assert batch["target"][0].tolist() == [False] * (frame + 2) + [True] * (frame + 1)
    assert (batch["dst"] - batch["src"] == dm.delta).all()
    # the tokens are the tokenizer's of the normalized frames, in raster order of the cells
    var = dm.evaluator.var_id[batch["src"]]
    x = (dm.evaluator.frames[batch["src"]] - dm.evaluator.mean[var][:, None, None, None]) / dm.evaluator.std[var][
        :, None, None, None
    ]
    with torch.no_grad():
        expected = tokenizer.encode(x)
    got = dm.evaluator.to_tokens(ids[:, 1 : frame + 1])
    assert torch.equal(got["morph"], expected["morph"]) and torch.equal(got["amp"], expected["amp"])
    # context: only the inputs that predict a future token carry one; slot 0 is the present token of the predicted
    # cell and stream, the next slot its upper-left neighbour (PAD for the first row), the last the cell's other
    # stream
    # the model reads MASK for the future frame (data.future_inputs=masked), the true tokens elsewhere
    inputs, MASK = batch["inputs"], SPECIALS.index("MASK")
    assert (inputs[:, frame + 2 : -1] == MASK).all()
    assert torch.equal(inputs[:, : frame + 2], ids[:, : frame + 2]) and torch.equal(inputs[:, -1], ids[:, -1])
    context, PAD = batch["context"], SPECIALS.index("PAD")
    assert context.shape == (3, 2 * frame + 3, dm.context_slots) and dm.context_slots == 9 + 1
    assert (context[:, : frame + 1] == PAD).all() and (context[:, -1] == PAD).all()
    predicting = context[:, frame + 1 : 2 * frame + 1]  # the input before future token j: [3, frame, slots]
    present = ids[:, 1 : frame + 1]
    assert torch.equal(predicting[..., 0], present)
    width = got["morph"].shape[-1]
    assert (predicting[:, : 2 * width, 1] == PAD).all()  # the first row has no upper neighbours
    assert torch.equal(predicting[:, 2 * (width + 1), 1], present[:, 0])  # cell (1, 1) sees (0, 0): morph
    assert torch.equal(predicting[:, 2 * (width + 1) + 1, 1], present[:, 1])  # … and amp
    assert torch.equal(predicting[:, 0::2, -1], present[:, 1::2]) and torch.equal(
        predicting[:, 1::2, -1], present[:, 0::2]
    )


def test_field_pairs_never_share_a_trajectory_across_splits(fields):
    dm, _ = fields
    frames = {
        s: set(torch.cat([dm.splits[s].tensors["src"], dm.splits[s].tensors["dst"]]).tolist())
        for s in ("train", "val", "test")
    }
    assert frames["train"] and frames["val"] and frames["test"]
    assert not frames["train"] & frames["val"] and not frames["train"] & frames["test"]


def test_encoded_fields_are_cached_by_checkpoint_hash(fields, data_dir, tmp_path, monkeypatch):
    import datamodules.tokens as tokens_module

    dm, ckpt = fields

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr(tokens_module, "encode_batches", no_encoding)
    again = token_datamodule("field_transformer", ckpt, data_dir, tmp_path)
    assert torch.equal(again.splits["val"].frame_ids, dm.splits["val"].frame_ids)
    # another checkpoint (other bytes) is another cache entry: encoding is asked for
    other = tmp_path / "other.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["global_step"] += 1
    torch.save(state, other)
    with pytest.raises(AssertionError, match="encoded again"):
        token_datamodule("field_transformer", other, data_dir, tmp_path)


@pytest.mark.parametrize(
    ("experiment", "other", "expected"),
    [("field_transformer", "eeg", "PhaedraTokenizer"), ("eeg_transformer", "phaedra", "EEGTokenizer")],
)
def test_a_checkpoint_of_another_tokenizer_is_refused_by_name(
    experiment, other, expected, experiment_run, data_dir, tmp_path
):
    ckpt = experiment_run(other).last_ckpt
    with pytest.raises(ValueError, match=f"holds a .*Tokenizer; expected a {expected} checkpoint"):
        token_datamodule(experiment, ckpt, data_dir, tmp_path)
    with pytest.raises(FileNotFoundError, match=f"expected a {expected} checkpoint"):
        token_datamodule(experiment, tmp_path / "missing.ckpt", data_dir, tmp_path)


def test_eeg_sequences_are_one_channel_in_time_order(experiment_run, data_dir, tmp_path):
    from tokenizers import load_tokenizer

    ckpt = experiment_run("eeg").last_ckpt
    dm = token_datamodule("eeg_transformer", ckpt, data_dir, tmp_path, ["data.max_patches=16"])
    BOS, EOS, PAD = (SPECIALS.index(s) for s in ("BOS", "EOS", "PAD"))
    batch = dm.splits["train"].__getitems__(list(range(len(dm.splits["train"]))))
    n = batch["valid"].sum(1) - 2  # patches per sequence
    assert 0 < n.min() and n.max() <= 16 and dm.max_len == int(n.max()) + 2
    rows = torch.arange(len(n))
    assert (batch["ids"][:, 0] == BOS).all() and (batch["ids"][rows, n + 1] == EOS).all()
    assert (batch["ids"][~batch["valid"]] == PAD).all()
    patch = batch["patch"]
    inside = patch[:, 1:] >= 0
    consecutive = (patch[:, 2:] - patch[:, 1:-1] == 1) | (patch[:, 2:] < 0)
    assert consecutive[inside[:, 1:]].all()  # consecutive patches of one channel
    assert dm.evaluator.patches.store.path.parent == data_dir / "eeg"  # read from the memory-mapped row cache
    tokenizer = load_tokenizer(ckpt)
    first = dm.evaluator.patches[patch[:4, 1]]
    with torch.no_grad():
        expected = tokenizer.encode(first, sfreq=torch.full((4,), 256.0))["tokens"]
    assert torch.equal(batch["ids"][:4, 1] - dm.vocab.range("eeg").start, expected)


def test_a_debug_run_trains_its_tokenizer_with_the_same_debug_preset():
    """`python train.py experiment=field_transformer debug=fast` with no checkpoint: the tokenizer run it starts gets
    debug=fast too (not the full recipe), unless the tokenizer overrides choose a debug preset themselves."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from datamodules.tokens import parent_debug
    from tests.helpers import ROOT

    assert parent_debug([]) == []  # no Hydra app (tests, scripts): nothing to forward
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["experiment=field_transformer", "debug=fast"], return_hydra_config=True
        )
        plain = compose(config_name="train", overrides=["experiment=field_transformer"], return_hydra_config=True)
    try:
        HydraConfig.instance().set_config(cfg)
        assert parent_debug([]) == ["debug=fast"]
        assert parent_debug(["trainer.max_steps=10", "debug=fast"]) == []
        HydraConfig.instance().set_config(plain)
        assert parent_debug([]) == []
    finally:
        HydraConfig.instance().cfg = None


def test_field_frames_read_snapshots_from_the_files_in_dataset_variable_trajectory_time_order(tmp_path):
    """FieldFrames (the field token pipeline's frames) reads snapshots on demand, frame i of the order (dataset,
    variable, trajectory, time); its fingerprint (the token cache key) follows the files, so rewriting one is a new
    cache entry; Normalized standardizes each frame with its variable's statistics."""
    import os

    from datamodules.sources import NpyFields
    from datamodules.tokens import FieldFrames, Normalized

    data = np.random.default_rng(0).normal(size=(4, 5, 8, 6)).astype(np.float32)  # NTHW: 4 trajectories of 5
    other = np.random.default_rng(1).normal(size=(3, 2, 8, 6)).astype(np.float32)  # NCHW: 3 samples of 2 variables
    np.save(tmp_path / "a.npy", data)
    np.save(tmp_path / "b.npy", other)
    arrays = NpyFields(str(tmp_path / "a.npy"), "NTHW").open(tmp_path) + NpyFields(
        str(tmp_path / "b.npy"), "NCHW"
    ).open(tmp_path)
    frames = FieldFrames(arrays)
    expected = np.concatenate([data.reshape(20, 8, 6), other[:, 0], other[:, 1]])  # b: variable 0, then 1
    assert len(frames) == 26
    picks = np.array([25, 0, 7, 20, 19, 23])
    assert torch.equal(frames[picks], torch.from_numpy(expected[picks])[:, None])
    assert torch.equal(frames[3:9], torch.from_numpy(expected[3:9])[:, None])
    var_id = torch.tensor([0] * 20 + [1] * 3 + [2] * 3)
    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 8.0])
    normalized = Normalized(frames, var_id, mean, std)[18:24]
    assert torch.allclose(
        normalized[:, 0],
        (torch.from_numpy(expected[18:24]) - mean[var_id[18:24], None, None]) / std[var_id[18:24], None, None],
    )
    key = frames.fingerprint()
    assert FieldFrames(arrays).fingerprint() == key
    np.save(tmp_path / "a.npy", data + 1)
    stat = os.stat(tmp_path / "a.npy")
    os.utime(tmp_path / "a.npy", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert FieldFrames(NpyFields(str(tmp_path / "a.npy"), "NTHW").open(tmp_path) + arrays[1:]).fingerprint() != key
