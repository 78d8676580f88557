"""Field pairs and EEG sequences for the transformer, read from the token stores of encode.py: pairs and runs from the
stores' index, the ids the tokenizer gives the true data of the rows, splits that are the tokenizer's, and refusals
that name the problem (no store, a store of another kind, a changed checkpoint or data, a split key)."""

import json
import shutil

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException

from datamodules.eeg_tokens import channel_runs
from datamodules.field_tokens import pairs_of
from lit_modules.forecast import FieldForecast
from models import SPECIALS


def token_datamodule(experiment: str, store, data_dir, output_dir, extra=()):
    from hydra.utils import instantiate

    from tests.helpers import compose_cfg

    cfg = compose_cfg([f"experiment={experiment}", "debug=fast", f"data.store={store}", *extra], output_dir, data_dir)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def fields(token_store, data_dir, tmp_path_factory):
    store = token_store("phaedra")
    extra = ["data.future_inputs=masked", "data.periodic=false"]  # the stencil cut at the edges (PAD outside)
    return token_datamodule("field_transformer", store, data_dir, tmp_path_factory.mktemp("ft"), extra), store


def test_field_pairs_are_present_then_future_frame_cell_by_cell(fields):
    dm, _ = fields
    inputs = dm.evaluation_inputs()
    tokenizer, truth = inputs["tokenizer"], inputs["truth"]["val"]
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
    index = dm.stores["val"].index
    assert (index["time"][batch["dst"]] - index["time"][batch["src"]] == dm.delta).all()
    assert torch.equal(batch["variable"], torch.from_numpy(index["variable"][batch["src"]].astype(np.int64)))
    # the tokens are the tokenizer's of the true frames of those rows (read from the data files), normalized with
    # the tokenizer's statistics, in raster order of the cells
    var = batch["variable"]
    mean, std = inputs["mean"][var][:, None, None, None], inputs["std"][var][:, None, None, None]
    with torch.no_grad():
        expected = tokenizer.encode((truth[batch["src"]] - mean) / std)
    got = FieldForecast(**inputs).to_tokens(ids[:, 1 : frame + 1])
    for stream in ("morph", "amp"):  # encoded in batches of 64 by encode.py: equal but for float32 rounding ties
        assert (got[stream] != expected[stream]).float().mean() <= 1e-3, stream
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


def test_present_inputs_read_the_present_token_where_the_future_one_is_predicted(fields, data_dir, tmp_path):
    """data.future_inputs=present (the default): ids [BOS] future frame, inputs the present frame [EOS], so input j
    predicts the future token j from the present token j, with the context, types and positions the masked sequence
    gives the input that predicts it; bidirectional attention (causal False)."""
    masked, store = fields
    dm = token_datamodule("field_transformer", store, data_dir, tmp_path, ["data.periodic=false"])  # as `masked`
    assert dm.future_inputs == "present" and not dm.causal and masked.causal
    rows = [0, 1, 2]
    a, b = dm.splits["val"].__getitems__(rows), masked.splits["val"].__getitems__(rows)
    frame = 2 * (dm.max_len - 2)
    present, future = b["ids"][:, 1 : frame + 1], b["ids"][:, frame + 2 : -1]
    assert a["ids"].shape == a["inputs"].shape == (3, frame + 1)
    assert (a["ids"][:, 0] == SPECIALS.index("BOS")).all() and torch.equal(a["ids"][:, 1:], future)
    assert torch.equal(a["inputs"][:, :-1], present) and (a["inputs"][:, -1] == SPECIALS.index("EOS")).all()
    reads = slice(frame + 1, 2 * frame + 1)  # the masked sequence's inputs that predict the future frame
    assert torch.equal(a["context"][:, :-1], b["context"][:, reads])
    for key in ("types", "positions"):  # input j has the stream and cell of the token it predicts (and reads)
        assert torch.equal(a[key][:, :-1], b[key][:, frame + 2 : -1]), key
    assert a["target"][0].tolist() == [False] + [True] * frame
    assert (dm.present_at, dm.reads) == (slice(0, frame), slice(0, frame))
    # the pair's variable is its condition (data.condition_on_variable, default true)
    assert torch.equal(a["condition"], a["variable"]) and dm.conditions == len(dm.normalization.variables) > 1
    off = token_datamodule("field_transformer", store, data_dir, tmp_path, ["data.condition_on_variable=false"])
    assert off.conditions == 0 and "condition" not in off.splits["val"].__getitems__(rows)
    assert (masked.present_at, masked.reads) == (slice(1, frame + 1), reads)


def test_a_periodic_grid_wraps_the_context_stencil_around_its_edges(fields, data_dir, tmp_path):
    """data.periodic=true (field_transformer's default): the upper-left context slot of cell (0, 0) is the present
    token of the last cell (the grid wraps around) where periodic=false reads PAD; the grid's size per axis is the
    period of the rotary positions."""
    _, store = fields
    dm = token_datamodule("field_transformer", store, data_dir, tmp_path)
    flat = token_datamodule("field_transformer", store, data_dir, tmp_path, ["data.periodic=false"])
    a, b = dm.splits["val"].__getitems__([0, 1]), flat.splits["val"].__getitems__([0, 1])
    present, (h, w) = a["inputs"][:, :-1], dm.grid
    assert dm.position_period == [float(h), float(w)] and flat.position_period is None
    for k in range(2):  # morph, amp: slot 1 is the neighbour at offset (-1, -1)
        assert torch.equal(a["context"][:, k, 1], present[:, 2 * (h * w - 1) + k])
        assert (b["context"][:, k, 1] == SPECIALS.index("PAD")).all()
    inside = 2 * (w + 1)  # cell (1, 1): its stencil lies inside the grid, the same either way
    assert torch.equal(a["context"][:, inside], b["context"][:, inside])
    assert (a["context"][:, :-1] != SPECIALS.index("PAD")).all()  # the last input (EOS) has no context
    with pytest.raises(InstantiationException, match=r"data.periodic must be true or false, got 'maybe'"):
        token_datamodule("field_transformer", store, data_dir, tmp_path, ["data.periodic=maybe"])


def test_field_pairs_never_share_a_trajectory_across_splits(fields):
    dm, _ = fields
    trajectories = {}
    for split in ("train", "val", "test"):
        index, pairs = dm.stores[split].index, dm.splits[split].tensors
        assert len(pairs["src"]) > 0
        for key in ("dataset", "variable", "trajectory"):  # a pair is one trajectory and variable
            assert np.array_equal(index[key][pairs["src"]], index[key][pairs["dst"]])
        src = pairs["src"].numpy()
        trajectories[split] = set(zip(index["dataset"][src].tolist(), index["trajectory"][src].tolist(), strict=True))
    assert not trajectories["train"] & trajectories["val"] and not trajectories["train"] & trajectories["test"]
    assert not trajectories["val"] & trajectories["test"]


def test_pairs_come_from_the_index_within_a_trajectory_and_variable():
    index = np.zeros(9, [("dataset", "i4"), ("variable", "i4"), ("trajectory", "i8"), ("time", "i4")])
    # rows: traj 5 var 0 at t 0, 1, 2, 4 (t 3 missing); traj 5 var 1 at t 0, 1; traj 6 var 0 at t 1, 0; dataset 1
    index["trajectory"] = [5, 5, 5, 5, 5, 5, 6, 6, 5]
    index["variable"] = [0, 0, 0, 0, 1, 1, 0, 0, 0]
    index["time"] = [0, 1, 2, 4, 0, 1, 1, 0, 1]
    index["dataset"] = [0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert pairs_of(index, 1).tolist() == [[0, 1], [1, 2], [4, 5], [7, 6]]
    assert pairs_of(index, 2).tolist() == [[0, 2], [2, 3]]
    assert pairs_of(index, 5).tolist() == []


def test_eeg_runs_are_consecutive_patches_of_one_channel_cut_at_gaps():
    index = np.zeros(8, [("recording", "i4"), ("channel", "i4"), ("rate", "f4"), ("start", "i8")])
    index["recording"] = [0, 0, 0, 0, 0, 1, 1, 0]
    index["channel"] = [0, 0, 0, 0, 1, 0, 0, 0]
    index["start"] = [0, 32, 64, 128, 0, 0, 32, 96]  # row 7: the patch between 64 and 128, stored last
    runs = channel_runs(index, patch_len=32, max_patches=3)
    assert [r.tolist() for r in runs] == [[0, 1, 2], [7, 3], [4], [5, 6]]
    index["start"][7] = 200  # now a gap after 64 and after 128
    assert [r.tolist() for r in channel_runs(index, 32, 8)] == [[0, 1, 2], [3], [7], [4], [5, 6]]


def test_eeg_sequences_are_one_channel_in_time_order(token_store, data_dir, tmp_path):
    store = token_store("eeg")
    dm = token_datamodule("eeg_transformer", store, data_dir, tmp_path, ["data.max_patches=16"])
    BOS, EOS, PAD = (SPECIALS.index(s) for s in ("BOS", "EOS", "PAD"))
    val = dm.splits["val"]
    batch = val.__getitems__(list(range(len(val))))
    n = batch["valid"].sum(1) - 2  # patches per sequence
    assert 0 < n.min() and n.max() <= 16 and dm.max_len >= int(n.max()) + 2
    rows = torch.arange(len(n))
    assert (batch["ids"][:, 0] == BOS).all() and (batch["ids"][rows, n + 1] == EOS).all()
    assert (batch["ids"][~batch["valid"]] == PAD).all()
    index, patch = dm.stores["val"].index, batch["patch"]
    follows = (patch[:, 2:] >= 0) & (patch[:, 1:-1] >= 0)
    a, b = patch[:, 1:-1][follows].numpy(), patch[:, 2:][follows].numpy()
    for key in ("recording", "channel", "rate"):  # consecutive patches of one channel
        assert np.array_equal(index[key][a], index[key][b])
    assert (index["start"][b] - index["start"][a] == dm.stores["val"].meta["data"]["patch_len"]).all()
    inputs = dm.evaluation_inputs()
    patches = inputs["patches"]["val"]
    assert patches.dataset.store.path.parent == data_dir / "eeg"  # read from the memory-mapped row cache
    with torch.no_grad():
        expected = inputs["tokenizer"].encode(patches[patch[:4, 1]], sfreq=torch.full((4,), 256.0))["tokens"]
    assert torch.equal(batch["ids"][:4, 1] - dm.vocab.range("eeg").start, expected)


@pytest.mark.parametrize(
    ("experiment", "other", "kind"),
    [("field_transformer", "eeg", "EEGTokenizer tokens of eeg data"), ("eeg_transformer", "phaedra", "fields")],
)
def test_a_store_of_another_tokenizer_kind_is_refused_by_name(experiment, other, kind, token_store, data_dir, tmp_path):
    with pytest.raises(ValueError, match=f"a store of .*{kind}.*this transformer reads the tokens of"):
        token_datamodule(experiment, token_store(other), data_dir, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no token store of split\(s\) \['train', 'val', 'test'\]: make one"):
        token_datamodule(experiment, tmp_path / "missing", data_dir, tmp_path)
    with pytest.raises(ValueError, match=r"data.store is not set: make one with `python train.py experiment="):
        token_datamodule(experiment, "null", data_dir, tmp_path)


def test_a_changed_checkpoint_or_changed_data_are_refused(token_store, data_dir, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(token_store("phaedra"), copy)

    def edit(split, change):
        path = copy / split / "meta.json"
        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta))

    edit("test", lambda m: m["data"]["trajectories"].update({k: [0] for k in m["data"]["trajectories"]}))
    dm = token_datamodule("field_transformer", copy, data_dir, tmp_path)  # tokens alone need no data
    with pytest.raises(ValueError, match=r"test: the data it was encoded from have changed since"):
        dm.evaluation_inputs()
    for split in ("train", "val", "test"):
        edit(split, lambda m: m["tokenizer"].update(sha256="0" * 64))
    with pytest.raises(ValueError, match=r"changed since the store was written \(sha256 differs\)"):
        token_datamodule("field_transformer", copy, data_dir, tmp_path)


@pytest.mark.parametrize("experiment", ["field_transformer", "eeg_transformer"])
def test_the_split_is_the_stores_not_a_key(experiment, make_cfg):
    """The transformer's splits are those the tokenizer's data were split into (the store's): no key can change them."""
    with pytest.raises(ConfigCompositionException, match="split"):
        make_cfg([f"experiment={experiment}", "data.split=[0.6,0.2,0.2]"])
