"""Property-based tests (hypothesis) of the merging maths on small random tensors: what must
hold for every input, not only the hand-picked ones of test_maths.py."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calm.merging.mask import binarise, commit, init_mask_logits, mix, pack, unpack, update_logits

FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def vectors(draw, count: int = 2, max_tensors: int = 3):
    """`count` name -> tensor dicts of the same shapes (1-2 dims), plus a boolean mask of them."""
    n_tensors = draw(st.integers(1, max_tensors))
    shapes = [tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))) for _ in range(n_tensors)]

    def tensor(shape, elements):
        size = int(torch.Size(shape).numel())
        return torch.tensor(draw(st.lists(elements, min_size=size, max_size=size))).reshape(shape)

    out = [{f"t{i}": tensor(s, FINITE).float() for i, s in enumerate(shapes)} for _ in range(count)]
    mask = {f"t{i}": tensor(s, st.booleans()) for i, s in enumerate(shapes)}
    return out, mask


@settings(max_examples=100, deadline=None)
@given(vectors())
def test_conflict_free_merge_takes_each_coordinate_from_exactly_one_source(data):
    (prev, new), mask = data
    merged = commit(prev, new, mask, "both")
    for n in prev:
        from_new, from_prev = merged[n] == new[n], merged[n] == prev[n]
        # every coordinate is one of the two inputs' values, the one the mask picks, bit for bit
        assert torch.equal(merged[n], torch.where(mask[n], new[n], prev[n]))
        assert bool((from_new | from_prev).all())


@settings(max_examples=100, deadline=None)
@given(vectors(), st.floats(0, 1))
def test_soft_mask_merge_stays_between_its_two_sources(data, m):
    (prev, new), _ = data
    for n in prev:
        out = mix(prev[n], new[n], torch.full_like(prev[n], m), "both")
        low, high = torch.minimum(prev[n], new[n]), torch.maximum(prev[n], new[n])
        slack = 1e-6 * (high.abs() + low.abs()) + 1e-30  # rounding of (1-m)a + mb
        assert bool((out >= low - slack).all() and (out <= high + slack).all())


@settings(max_examples=100, deadline=None)
@given(vectors(count=1), st.floats(0, 1, exclude_max=True))
def test_initial_mask_switches_on_only_entries_larger_than_every_entry_left_off(data, fraction):
    (tau,), _ = data
    R = init_mask_logits(tau, fraction, 5.0)
    on = torch.cat([tau[n].abs().flatten()[(R[n] > 0).flatten()] for n in tau])
    off = torch.cat([tau[n].abs().flatten()[(R[n] <= 0).flatten()] for n in tau])
    total = sum(t.numel() for t in tau.values())
    assert len(on) <= int(fraction * total)
    if len(on) and len(off):
        assert on.min() > off.max()
    assert all(bool(((R[n] == 5.0) | (R[n] == -5.0)).all()) for n in R)


@settings(max_examples=100, deadline=None)
@given(vectors(count=1), st.floats(0, 10))
def test_polarising_regulariser_alone_never_flips_or_shrinks_a_logit(data, alpha):
    (R,), _ = data
    zero = {n: torch.zeros_like(r) for n, r in R.items()}
    out = {n: update_logits(r, zero[n], lr=1e7, alpha=alpha, regulariser="polarise") for n, r in R.items()}
    for n in R:
        assert torch.equal(torch.sign(out[n]), torch.sign(R[n]))
        assert bool((out[n].abs() >= R[n].abs()).all())
        assert torch.equal(binarise(out)[n], binarise(R)[n])


@settings(max_examples=100, deadline=None)
@given(vectors(count=1))
def test_bit_packed_masks_unpack_to_the_same_masks(data):
    _, mask = data
    packed, meta = pack(mask)
    back = unpack(packed, meta)
    assert all(torch.equal(back[n], mask[n]) for n in mask)


# --- TIES and Consensus (calm.merging.ties / .consensus, from the `baselines` branch) --------
# Skipped until those modules exist here; they run as soon as the branches are merged.

@settings(max_examples=60, deadline=None)
@given(vectors(count=3), st.floats(0.01, 1), st.floats(0.01, 1))
def test_ties_disjoint_mean_stays_within_the_inputs_range_and_sign(data, k, lam):
    ties = pytest.importorskip("calm.merging.ties")
    taus, _ = data
    merged = ties.ties(taus, k=k, lam=lam, merge="mean")
    unscaled = ties.ties_vector(taus, k=k, merge="mean")
    for n in merged:
        stack = torch.stack([t[n] for t in taus])
        low, high = stack.min(dim=0).values.clamp(max=0), stack.max(dim=0).values.clamp(min=0)
        slack = 1e-5 * (high - low) + 1e-30
        # the mean of trimmed entries that agree with the elected sign: inside [min, max] (with 0)
        assert bool((unscaled[n] >= low - slack).all() and (unscaled[n] <= high + slack).all())
        assert torch.allclose(merged[n], lam * unscaled[n])
        assert bool((merged[n].abs() <= torch.maximum(low.abs(), high.abs()) + slack).all())


@settings(max_examples=60, deadline=None)
@given(vectors(count=3), st.floats(0.0, 2.0), st.integers(1, 3), st.floats(0.01, 1))
def test_consensus_keeps_each_entry_of_the_merge_or_zeroes_it(data, tall_lambda, min_tasks, lam):
    consensus = pytest.importorskip("calm.merging.consensus")
    taus, _ = data
    out = consensus.consensus_ta(taus, tall_lambda=tall_lambda, min_tasks=min_tasks, lam=lam)
    total = {n: sum(t[n] for t in taus) for n in taus[0]}
    for n in out:
        kept = torch.isclose(out[n], lam * total[n], rtol=1e-6, atol=0)
        assert bool((kept | (out[n] == 0)).all()), "an entry is neither the task-arithmetic value nor 0"
        # hence never outside the range of the unmasked merge and 0
        low, high = (lam * total[n]).clamp(max=0), (lam * total[n]).clamp(min=0)
        assert bool((out[n] >= low).all() and (out[n] <= high).all())
