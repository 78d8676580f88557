"""The causal transformer and its vocabulary: id ranges and type ids, the causal mask, padding, KV-cache generation."""

import pytest
import torch

from models import SPECIALS, Transformer, TransformerConfig, Vocabulary
from tests.helpers import f32_tolerance

STREAMS = {"image": {"image": 2048}, "catalog": {"mag_r": 1025, "redshift": 1025}, "spectrum": {"spectrum": 64}}


def test_vocabulary_ranges_do_not_overlap_and_type_ids_are_fixed():
    vocab = Vocabulary.from_streams(STREAMS)
    assert vocab.size == len(SPECIALS) + 2048 + 2 * 1025 + 64 and vocab.n_types == 5
    covered = torch.zeros(vocab.size, dtype=torch.long)
    covered[: len(SPECIALS)] += 1
    for r in vocab.ranges:
        covered[r.start : r.stop] += 1
    assert torch.all(covered == 1)  # every id in exactly one range
    assert [r.type_id for r in vocab.ranges] == [1, 2, 3, 4]
    ids = vocab.to_global("catalog", "redshift", torch.tensor([0, 1024]))
    assert vocab.type_of(ids).tolist() == [3, 3] and vocab.to_local(ids)[1].tolist() == [0, 1024]
    assert vocab.type_of(torch.tensor([vocab.special("BOS"), vocab.range("image").start])).tolist() == [0, 1]
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(ValueError, match=r"catalog/redshift ids must lie in \[0, 1025\)"):
        vocab.to_global("catalog", "redshift", torch.tensor([1025]))
    with pytest.raises(KeyError, match="image/image"):
        vocab.range("images")
    with pytest.raises(ValueError, match="overlaps"):
        Vocabulary([*vocab.ranges[:1], vocab.ranges[2]])


def tiny(vocab_size=50, n_types=3, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        TransformerConfig(vocab_size=vocab_size, n_types=n_types, max_len=64, d_model=32, n_layers=2, n_heads=4, **kw)
    ).eval()


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_a_change_at_position_t_changes_no_logits_before_t(norm):
    model = tiny(norm=norm)
    g = torch.Generator().manual_seed(0)
    ids, types = torch.randint(50, (2, 20), generator=g), torch.randint(3, (2, 20), generator=g)
    with torch.no_grad():
        before = model(ids, types)
        changed = ids.clone()
        changed[:, 12] = (changed[:, 12] + 1) % 50
        after = model(changed, types)
    tol = f32_tolerance(before, 2 * 6)
    assert (after[:, :12] - before[:, :12]).abs().max() <= tol
    assert (after[:, 12:] - before[:, 12:]).abs().max() > 100 * tol  # and it does change what comes after


def test_an_encoder_attends_both_ways_but_not_to_padding():
    """causal=False: a change at position 12 reaches every position's logits, before it too; a padding key reaches
    none; a KV cache and generation are refused."""
    model = tiny(causal=False)
    g = torch.Generator().manual_seed(0)
    ids, types = torch.randint(50, (2, 20), generator=g), torch.randint(3, (2, 20), generator=g)
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 50
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[:, 12] = False
    with torch.no_grad():
        before, after = model(ids, types), model(changed, types)
        masked, masked_changed = model(ids, types, key_valid=valid), model(changed, types, key_valid=valid)
    tol = f32_tolerance(before, 2 * 6)
    assert ((after - before).abs().amax((0, 2)) > 10 * tol).all()  # every position sees position 12
    others = torch.arange(20) != 12
    assert (masked_changed[:, others] - masked[:, others]).abs().max() <= tol  # … unless it is padding
    with pytest.raises(ValueError, match="attends both ways"):
        model(ids, types, cache=model.new_cache())
    with pytest.raises(ValueError, match="attends both ways"):
        model.generate(ids[:, :4], types[0], 2)


def test_a_condition_reaches_every_position_and_is_checked():
    """conditions=3: two sequences that differ only in their condition differ at every position, also in cached
    generation; a missing, misshapen or out-of-range condition is refused, as is one given to a model without."""
    model = tiny(conditions=3)
    ids, types = torch.randint(50, (2, 12)), torch.zeros(2, 12, dtype=torch.long)
    ids[1] = ids[0]
    with torch.no_grad():
        logits = model(ids, types, condition=torch.tensor([0, 2]))
    assert ((logits[0] - logits[1]).abs().amax(-1) > 0).all()
    cached = model.generate(ids[:, :4], types[0], 6, condition=torch.tensor([0, 2]))
    uncached = model.generate(ids[:, :4], types[0], 6, condition=torch.tensor([0, 2]), use_cache=False)
    assert torch.equal(cached, uncached)
    for bad, match in [(None, "got None"), (torch.tensor([0]), r"got \(1,\)"), (torch.tensor([0, 3]), r"\[0, 3\)")]:
        with pytest.raises(ValueError, match=match):
            model(ids, types, condition=bad)
    with pytest.raises(ValueError, match="config.conditions=0"):
        tiny()(ids, types, condition=torch.tensor([0, 1]))


def test_padding_keys_are_not_attended():
    model = tiny()
    ids, types = torch.randint(50, (1, 10)), torch.zeros(1, 10, dtype=torch.long)
    valid = torch.ones(1, 10, dtype=torch.bool)
    valid[0, 3] = False  # position 3 is padding
    with torch.no_grad():
        a = model(ids, types, key_valid=valid)
        other = ids.clone()
        other[0, 3] = (other[0, 3] + 7) % 50
        b = model(other, types, key_valid=valid)
    tol = f32_tolerance(a, 12)
    assert (a[:, 4:] - b[:, 4:]).abs().max() <= tol  # later positions do not see the padded one


def test_greedy_generation_with_a_kv_cache_equals_generation_without_one():
    model = tiny(vocab_size=40, n_types=4)
    bounds = torch.tensor([[0, 4], [4, 20], [20, 36], [36, 40]])
    layout = torch.tensor([0] + [1] * 6 + [0] + [2] * 8 + [3] * 4)  # BOS, 6 of type 1, SEP, 8 of type 2, 4 of type 3
    prompt = torch.tensor([[1, 5, 9, 7], [1, 4, 4, 19]])
    cached = model.generate(prompt, layout, 16, bounds=bounds, use_cache=True)
    uncached = model.generate(prompt, layout, 16, bounds=bounds, use_cache=False)
    assert torch.equal(cached, uncached)
    # every generated token lies in the id range of its position's type, across the modality boundaries
    for t in range(4, 20):
        lo, hi = bounds[layout[t]]
        assert torch.all((cached[:, t] >= lo) & (cached[:, t] < hi)), t


def test_generation_takes_each_position_type_from_the_layout():
    model = tiny(vocab_size=40, n_types=4)
    seen = []
    original = model.forward

    def spy(ids, types, key_valid=None, cache=None, positions=None, context=None, condition=None):
        seen.append((types.clone(), positions))
        return original(ids, types, key_valid, cache, positions, context, condition)

    model.forward = spy
    layout = torch.tensor([0, 1, 1, 2, 2, 3])
    model.generate(torch.tensor([[1, 5]]), layout, 4)
    fed = torch.cat([seen[0][0][0], *(s[0][0] for s in seen[1:])])  # prompt types, then one per cached step
    assert fed.tolist() == layout[:-1].tolist()  # the last generated token is never fed back
    # positions given with the layout are fed the same way
    seen.clear()
    positions = torch.tensor([0, 3, 1, 3, 1, 2])
    model.generate(torch.tensor([[1, 5]]), layout, 4, positions=positions)
    assert torch.cat([seen[0][1][0], *(s[1][0] for s in seen[1:])]).tolist() == positions[:-1].tolist()


def test_explicit_positions_keep_the_causal_mask_and_the_cache_exact():
    """Field pairs give both frames the positions of their grid cells: the mask is still by sequence order, and
    cached greedy generation with those positions equals uncached."""
    model = tiny(vocab_size=40, n_types=3)
    frame = torch.arange(1, 7)  # 6 cells
    positions = torch.cat([torch.tensor([0]), frame, torch.tensor([7]), frame])  # BOS, frame, SEP, frame
    layout = torch.tensor([0] + [1] * 6 + [0] + [2] * 6)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(40, (2, 14), generator=g)
    with torch.no_grad():
        before = model(ids, layout.expand(2, -1), positions=positions)
        changed = ids.clone()
        changed[:, 9] = (changed[:, 9] + 1) % 40
        after = model(changed, layout.expand(2, -1), positions=positions)
    tol = f32_tolerance(before, 12)
    assert (after[:, :9] - before[:, :9]).abs().max() <= tol
    assert (after[:, 9:] - before[:, 9:]).abs().max() > 100 * tol
    bounds = torch.tensor([[0, 4], [4, 20], [20, 40]])
    prompt = ids[:, :8]
    cached = model.generate(prompt, layout, 6, bounds=bounds, positions=positions)
    uncached = model.generate(prompt, layout, 6, bounds=bounds, positions=positions, use_cache=False)
    assert torch.equal(cached, uncached)
    # with code vectors and aligned context ids per position (two slots), as the field pairs are trained
    model = tiny(vocab_size=40, n_types=3, code_dim=3, context=2)
    model.set_codes(torch.randn(40, 3, generator=g))
    context = torch.zeros(2, 14, 2, dtype=torch.long)
    context[:, 7:13, 0] = ids[:, 1:7]  # the input before each future token carries the present token of its cell
    context[:, 8:13, 1] = ids[:, 1:6]  # … and of the cell before it
    cached = model.generate(prompt, layout, 6, bounds=bounds, positions=positions, context=context)
    uncached = model.generate(prompt, layout, 6, bounds=bounds, positions=positions, context=context, use_cache=False)
    assert torch.equal(cached, uncached)
    with pytest.raises(ValueError, match="codes must be"):
        model.set_codes(torch.zeros(40, 2))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_len=64\)"):
        model(ids[:, :2], layout[:2].expand(2, -1), positions=torch.tensor([0, 64]))


def test_context_slots_start_as_the_first_slot_alone_and_are_checked():
    """The first context slot's embedding is added as is at initialization, the other slots not at all (their block
    of context_proj starts at 0), so a field model starts from persistence; a context of the wrong shape is refused."""
    model = tiny(vocab_size=40, n_types=3, context=3)
    g = torch.Generator().manual_seed(2)
    ids, types = torch.randint(40, (2, 9), generator=g), torch.zeros(2, 9, dtype=torch.long)
    context = torch.randint(40, (2, 9, 3), generator=g)
    other = context.clone()
    other[..., 1:] = torch.randint(40, (2, 9, 2), generator=g)
    with torch.no_grad():
        a, b = model(ids, types, context=context), model(ids, types, context=other)
        model.context_proj.weight.data[:, 32:] = torch.randn(32, 64, generator=g)  # d_model 32: slot 1 onwards
        c = model(ids, types, context=other)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match=r"context ids must be \[B, T, 3\]"):
        model(ids, types, context=context[..., :2])
    with pytest.raises(ValueError, match=r"context ids must be \[B, T, 0\]"):
        tiny(vocab_size=40, n_types=3)(ids, types, context=context)


def test_sequence_longer_than_max_len_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="longer than max_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long), torch.zeros(1, 65, dtype=torch.long))


def test_expected_code_pick_over_an_id_range_equals_the_pick_over_the_masked_vocabulary():
    """pick(logits of ids lo … hi − 1, lo=lo) (NextPatch: the EEG ids only) is the full-vocabulary pick with every
    other id masked, shifted by lo."""
    model = tiny(vocab_size=40, n_types=3, code_dim=3)
    g = torch.Generator().manual_seed(3)
    model.set_codes(torch.randn(40, 3, generator=g))
    logits = torch.randn(5, 40, generator=g)
    lo, hi = 12, 31
    masked = torch.full_like(logits, float("-inf"))
    masked[:, lo:hi] = logits[:, lo:hi]
    assert torch.equal(model.pick(logits[:, lo:hi], "expected_code", lo=lo) + lo, model.pick(masked, "expected_code"))


def test_grid_rope_depends_on_offsets_on_the_grid_and_keeps_the_cache_exact():
    """Axial 2-D rotary positions: moving every cell by the same offset leaves an encoder's outputs as they were
    (the learned position table zeroed, so only RoPE says where a token is); moving one cell changes them; cached
    generation equals uncached; coordinates and head width are checked."""
    model = tiny(vocab_size=40, n_types=3, causal=False, rope=True, rope_axes=2)
    with torch.no_grad():
        model.pos_emb.weight.zero_()
        for block in model.blocks:  # sharp attention (at init it is nearly uniform, wherever the tokens are)
            block.attn.qkv.weight.mul_(20)
    grid = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij"), -1).view(64, 2).float()
    g = torch.Generator().manual_seed(2)
    ids, types = torch.randint(40, (2, 64), generator=g), torch.ones(2, 64, dtype=torch.long)
    with torch.no_grad():
        model.set_coords(grid)
        before = model(ids, types)
        model.set_coords(grid + torch.tensor([3.0, -5.0]))  # the whole grid moved
        moved = model(ids, types)
        model.set_coords(torch.cat([grid[:1] + 1, grid[1:]]))  # one cell moved
        one = model(ids, types)
    tol = f32_tolerance(before, 2 * 8)
    assert (moved - before).abs().max() <= tol
    assert (one - before).abs().max() > 100 * tol
    causal = tiny(vocab_size=40, n_types=3, rope=True, rope_axes=2)
    causal.set_coords(grid)
    bounds = torch.tensor([[0, 4], [4, 20], [20, 40]])
    positions = torch.randperm(64, generator=g)[:20]
    layout = torch.ones(20, dtype=torch.long)
    cached = causal.generate(ids[:, :8], layout, 12, bounds=bounds, positions=positions)
    uncached = causal.generate(ids[:, :8], layout, 12, bounds=bounds, positions=positions, use_cache=False)
    assert torch.equal(cached, uncached)
    with pytest.raises(ValueError, match=r"coords must be \(64, 2\), got \(64, 3\)"):
        causal.set_coords(torch.zeros(64, 3))
    with pytest.raises(ValueError, match="coords must be none"):
        tiny().set_coords(grid)
    with pytest.raises(ValueError, match="head width divisible by 6"):
        tiny(rope=True, rope_axes=3)


def test_on_a_torus_a_cyclic_shift_of_the_grid_shifts_the_outputs():
    """data.periodic with model.transformer.pos_emb=false: periodic rotary angles (the grid's harmonics) and a
    context stencil that wraps around make the encoder equivariant to cyclic shifts of the grid, as an FNO is; with
    the stencil cut at the edges (PAD outside), or with the rotary angles of rope_base, it is not. Periods are
    checked."""
    from datamodules.field_tokens import neighbourhood

    n = 8
    grid = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).view(n * n, 2).float()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(4, 40, (2, n, n), generator=g)
    types = torch.ones(2, n * n, dtype=torch.long)

    def outputs(periodic_rope: bool, periodic_context: bool, shift: tuple[int, int]) -> torch.Tensor:
        period = [float(n), float(n)] if periodic_rope else None
        model = tiny(
            vocab_size=40, n_types=3, causal=False, rope=True, rope_axes=2, rope_period=period, pos_emb=False, context=9
        )
        with torch.no_grad():
            model.set_coords(grid)
            model.context_proj.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))  # all slots count
            for block in model.blocks:  # sharp attention (at init it is nearly uniform, wherever the tokens are)
                block.attn.qkv.weight.mul_(20)
            frame = ids.roll(shift, (1, 2)).flatten(1)
            index = neighbourhood((n, n), 1, 1, periodic=periodic_context)  # [64, 9], 64 = PAD
            context = torch.cat([frame, torch.zeros(2, 1, dtype=torch.long)], 1)[:, index]
            out = model(frame, types, context=context).view(2, n, n, -1)
        return out.roll((-shift[0], -shift[1]), (1, 2))  # back where the unshifted grid has it

    tol = f32_tolerance(outputs(True, True, (0, 0)), 4 * 9)
    for shift in [(3, -5), (1, 0)]:
        assert (outputs(True, True, shift) - outputs(True, True, (0, 0))).abs().max() <= tol
        assert (outputs(True, False, shift) - outputs(True, False, (0, 0))).abs().max() > 100 * tol
        assert (outputs(False, True, shift) - outputs(False, True, (0, 0))).abs().max() > 100 * tol
    assert tiny(pos_emb=False).pos_emb is None
    with pytest.raises(ValueError, match=r"rope_period must give a period > 0 for each of the 2 rope axes"):
        tiny(rope=True, rope_axes=2, rope_period=[8.0])
