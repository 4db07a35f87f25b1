"""TSV-Merge, Iso-C / Iso-CTS, WUDI and EMR against values worked out by hand, and against a
second route to the same number where one exists."""
from __future__ import annotations

import math

import pytest
import torch

from calm.merging.emr import emr_merge, emr_storage_bits, emr_task_vector
from calm.merging.iso import iso_c, iso_cts, split_rank
from calm.merging.spectral import polar
from calm.merging.tsv import tsv_merge
from calm.merging.wudi import interference_terms, wudi

D = torch.float64


def unit(deg: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(deg)), math.sin(math.radians(deg))], dtype=D)


def rotation(deg: float) -> torch.Tensor:
    return torch.stack([unit(deg), unit(deg + 90)], dim=1)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9) -> bool:
    return torch.allclose(a, b.to(a.dtype), atol=tol, rtol=0)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# --- the polar factor --------------------------------------------------------------------

def test_polar_factor_is_orthonormal_and_matches_the_inverse_square_root_route():
    a = randn(6, 4, seed=0)
    p = polar(a)
    assert close(p.T @ p, torch.eye(4))
    # second route: a (aᵀa)^(-1/2) from the eigendecomposition of aᵀa
    lam, w = torch.linalg.eigh(a.T @ a)
    assert close(p, a @ w @ torch.diag(lam.rsqrt()) @ w.T)
    assert close(polar(a.T), p.T)  # wide: orthonormal rows


def test_polar_of_two_unit_vectors_turns_them_symmetrically_apart():
    # Columns at 0° and 60°: the nearest orthonormal pair straddles their bisector (30°)
    # at ±45°, i.e. at −15° and 75°.
    p = polar(torch.stack([unit(0), unit(60)], dim=1))
    assert close(p, torch.stack([unit(-15), unit(75)], dim=1))


# --- TSV-Merge ---------------------------------------------------------------------------

def test_tsv_keeps_each_tasks_top_component_and_orthogonalises_both_sides():
    # T = 2, 2 × 2: each task keeps ⌊2 / 2⌋ = 1 singular triplet.
    # τ_1 = 3 e1 e1ᵀ + 0.5 e2 e2ᵀ keeps (3, e1, e1); τ_2 = 2 u wᵀ, u at 60°, w at 120°, keeps (2, u, w).
    # U = [e1, u] → polar: [p(−15°), p(75°)] (as above); V = [e1, w] → [p(15°), p(105°)].
    # Merged: α (3 p(−15°) p(15°)ᵀ + 2 p(75°) p(105°)ᵀ); the bias gets α · mean = α · (1 + 3) / 2.
    e1, e2 = unit(0), unit(90)
    t1 = {"w": 3 * torch.outer(e1, e1) + 0.5 * torch.outer(e2, e2), "b": torch.tensor([1.0], dtype=D)}
    t2 = {"w": 2 * torch.outer(unit(60), unit(120)), "b": torch.tensor([3.0], dtype=D)}
    expected = 3 * torch.outer(unit(-15), unit(15)) + 2 * torch.outer(unit(75), unit(105))
    out = tsv_merge([t1, t2], alpha=0.5)
    assert close(out["w"], 0.5 * expected)
    assert close(out["b"], torch.tensor([1.0]))


def test_tsv_of_one_task_at_full_rank_returns_alpha_times_the_task_vector():
    tau = {"tall": randn(5, 3, seed=1), "wide": randn(3, 5, seed=2), "bias": randn(3, seed=3)}
    out = tsv_merge([tau], alpha=0.7)
    for n in tau:
        assert close(out[n], 0.7 * tau[n])


def test_tsv_with_more_tasks_than_rank_keeps_no_component():
    # ⌊2 / 3⌋ = 0 triplets per task: the matrix's merged update is zero (as the authors' code)
    out = tsv_merge([{"w": randn(2, 2, seed=s)} for s in range(3)])
    assert close(out["w"], torch.zeros(2, 2))


def test_tsv_exclude_gives_the_mean():
    t1, t2 = {"emb": randn(3, 3, seed=4)}, {"emb": randn(3, 3, seed=5)}
    assert close(tsv_merge([t1, t2], alpha=2.0, exclude=("emb",))["emb"], t1["emb"] + t2["emb"])


# --- Iso-C -------------------------------------------------------------------------------

def test_iso_c_flattens_the_spectrum_of_the_sum_by_hand():
    # τ_1 + τ_2 = diag(3, 1): σ̄ = 2, U Vᵀ = I, so Iso-C = 2 I. Rotating every task as
    # R τ Qᵀ rotates the answer the same way: 2 R Qᵀ, and with R = rot(30°), Qᵀ = rot(45°),
    # R Qᵀ = rot(75°). With α = 1.5: 3 · rot(75°). The bias gets α · mean = 1.5 · 2.
    r, q = rotation(30), rotation(-45)
    t1 = {"w": r @ torch.diag(torch.tensor([2.0, 0.0], dtype=D)) @ q.T, "b": torch.tensor([1.0], dtype=D)}
    t2 = {"w": r @ torch.eye(2, dtype=D) @ q.T, "b": torch.tensor([3.0], dtype=D)}
    out = iso_c([t1, t2], alpha=1.5)
    assert close(out["w"], 3 * rotation(75))
    assert close(out["b"], torch.tensor([3.0]))


def test_iso_c_matches_the_eigendecomposition_of_m_mt():
    # Second route: M Mᵀ = W Λ Wᵀ gives σ = √λ and U Vᵀ = W Λ^(-1/2) Wᵀ M (M of full row rank).
    taus = [{"w": randn(4, 6, seed=10 + s)} for s in range(3)]
    m = sum(t["w"] for t in taus)
    lam, w = torch.linalg.eigh(m @ m.T)
    expected = lam.sqrt().mean() * (w @ torch.diag(lam.rsqrt()) @ w.T @ m)
    assert close(iso_c(taus)["w"], expected)


# --- Iso-CTS -----------------------------------------------------------------------------

def test_split_rank_by_hand():
    assert split_rank(384, 6, 0.8) == (306, 13)  # ⌊307.2⌋ = 307; round(77 / 6) = 13; 384 − 78
    assert split_rank(4, 2, 0.5) == (2, 1)
    assert split_rank(2, 2, 0.5) == (2, 0)  # round(0.5) = 0 (half to even): all common
    assert split_rank(7, 2, 0.0) == (1, 3)  # round(3.5) = 4 would need 8 > 7 dimensions


def test_iso_cts_common_and_task_specific_subspaces_by_hand():
    # T = 2, r = 4, fraction 0.5: c = 2 common directions, 1 per task.
    # Σ τ = diag(5, 3, 1.5, 1): common = (5, e1), (3, e2).
    # Residuals outside span(e1, e2): τ_1 → 2 e3e3ᵀ, τ_2 → diag(0, 0, −0.5, 1), top (1, e4).
    # Kept: U = V = [e1, e2, e3, e4] (orthonormal), σ = 5, 3, 2, 1: σ̄ = 11/4, Iso-CTS = 2.75 I.
    # Iso-C instead averages the sum's σ = 5, 3, 1.5, 1: 2.625 I (τ_2's −0.5 on e3 is heard).
    t1 = {"w": torch.diag(torch.tensor([5.0, 0.0, 2.0, 0.0], dtype=D))}
    t2 = {"w": torch.diag(torch.tensor([0.0, 3.0, -0.5, 1.0], dtype=D))}
    assert close(iso_cts([t1, t2], common_space_fraction=0.5)["w"], 2.75 * torch.eye(4))
    assert close(iso_c([t1, t2])["w"], 2.625 * torch.eye(4))


def test_iso_cts_with_the_whole_space_common_is_iso_c():
    taus = [{"w": randn(5, 7, seed=20 + s), "b": randn(5, seed=30 + s)} for s in range(3)]
    a, b = iso_cts(taus, alpha=1.3, common_space_fraction=1.0), iso_c(taus, alpha=1.3)
    assert all(close(a[n], b[n]) for n in a)


def test_iso_cts_is_isotropic_and_spans_the_common_and_task_directions():
    taus = [{"w": randn(8, 6, seed=40 + s)} for s in range(3)]
    out = iso_cts(taus, alpha=2.0, common_space_fraction=0.5)["w"]  # r = 6: c = 3, 1 per task
    s = torch.linalg.svdvals(out)
    assert close(s, s.mean().expand(6), tol=1e-9)
    # its column space holds the sum's top-3 left singular vectors and each task's residual top one
    q = torch.linalg.svd(out, full_matrices=False)[0]
    u = torch.linalg.svd(sum(t["w"] for t in taus), full_matrices=False)[0][:, :3]
    assert close(q @ q.T @ u, u)
    for t in taus:
        top = torch.linalg.svd(t["w"] - u @ u.T @ t["w"], full_matrices=False)[0][:, :1]
        assert close(q @ q.T @ top, top)


# --- WUDI --------------------------------------------------------------------------------

def test_wudi_closed_form_by_hand():
    # Rows as inputs: τ_1 = [1, 0], τ_2 = [1, 1] (1 × 2). Zero interference needs
    # τ_m τ_tᵀ = τ_t τ_tᵀ for both: a = 1 and a + b = 2, so τ_m = [1, 1] (the sum is [2, 1]).
    # Orthogonal rows τ_1 = [1, 0], τ_2 = [0, 2] interfere nowhere: τ_m is their sum [1, 2].
    one = torch.tensor([[1.0, 0.0]], dtype=D)
    got = wudi([{"w": one}, {"w": torch.tensor([[1.0, 1.0]], dtype=D)}], solver="closed_form")["w"]
    assert close(got, torch.tensor([[1.0, 1.0]]))
    got = wudi([{"w": one}, {"w": torch.tensor([[0.0, 2.0]], dtype=D)}], solver="closed_form")["w"]
    assert close(got, torch.tensor([[1.0, 2.0]]))


def test_wudi_gradient_matches_autograd_of_the_authors_loss():
    taus = [randn(3, 4, seed=50 + s) for s in range(3)]
    x = randn(3, 4, seed=60).requires_grad_(True)
    loss = sum(((x - t) @ t.T).square().sum() / t.square().sum() for t in taus)
    loss.backward()
    a, b = interference_terms(taus)
    assert close(2 * (x.detach() @ a - b), x.grad, tol=1e-9)


def test_wudi_first_adam_step_moves_every_entry_by_lr_against_the_gradient():
    # τ_1 = [1, 0], τ_2 = [1, 1]: A = [[1.5, .5], [.5, .5]], B = [2, 1]. From the sum [2, 1]
    # the gradient is 2 ([3.5, 1.5] − [2, 1]) = [3, 1]; Adam's first step is lr · sign: [1.9, 0.9].
    taus = [{"w": torch.tensor([[1.0, 0.0]])}, {"w": torch.tensor([[1.0, 1.0]])}]
    assert close(wudi(taus, steps=1, lr=0.1)["w"], torch.tensor([[1.9, 0.9]]), tol=1e-6)


def test_wudi_adam_converges_to_the_closed_form():
    taus = [{"w": randn(3, 4, seed=70 + s).float()} for s in range(2)]
    exact = wudi(taus, solver="closed_form")["w"]
    assert not close(exact, taus[0]["w"] + taus[1]["w"], tol=1e-2)
    assert close(wudi(taus, steps=3000, lr=1e-2)["w"], exact, tol=2e-3)


def test_wudi_tensor_selection_and_fallbacks():
    taus = [{"enc.dense.weight": randn(2, 3, seed=80 + s).float(), "enc.dense.bias": torch.full((2,), 1.0 + 2 * s),
             "embeddings.word_embeddings.weight": torch.full((4, 3), float(s)),
             "zero.weight": torch.zeros(2, 2)} for s in range(2)]
    out = wudi(taus, solver="closed_form")  # the authors' code: everything but linear weights stays at 0
    assert close(out["enc.dense.bias"], torch.zeros(2))
    assert close(out["embeddings.word_embeddings.weight"], torch.zeros(4, 3))
    assert close(out["zero.weight"], torch.zeros(2, 2))  # no 0/0 from a layer no task changed
    out = wudi(taus, solver="closed_form", others="mean", exclude=())  # FusionBench's port
    assert close(out["enc.dense.bias"], torch.full((2,), 2.0))
    # the embedding is now a "linear" weight: τ_1 = 0 has no term, so τ_m = τ_2 (all ones)
    assert close(out["embeddings.word_embeddings.weight"], torch.ones(4, 3), tol=1e-6)


# --- EMR ---------------------------------------------------------------------------------

# Three tasks over two tensors, a (2 entries) and b (1 entry):
#   τ_1 = [0.3, −0.2 | 0.1], τ_2 = [−0.1, −0.4 | 0.2], τ_3 = [0.2, 0.1 | −0.5]
#   Σ = [0.4, −0.5 | −0.2]: elected signs [+, −, −]
#   masks: M_1 = [1, 1 | 0], M_2 = [0, 1 | 0], M_3 = [1, 0 | 1]
#   τ_uni = [+max(0.3, 0.2), −max(0.2, 0.4) | −0.5] = [0.3, −0.4 | −0.5]
# Paper (global sums): λ_1 = 0.6 / 0.7, λ_2 = 0.7 / 0.4, λ_3 = 0.8 / 0.8.
# Code (sum of per-tensor means): λ_1 = (0.25 + 0.1) / (0.35 + 0) = 1,
#   λ_2 = (0.25 + 0.2) / (0.2 + 0) = 2.25, λ_3 = (0.15 + 0.5) / (0.15 + 0.5) = 1.
EMR_TAUS = [
    {"a": torch.tensor([0.3, -0.2]), "b": torch.tensor([0.1])},
    {"a": torch.tensor([-0.1, -0.4]), "b": torch.tensor([0.2])},
    {"a": torch.tensor([0.2, 0.1]), "b": torch.tensor([-0.5])},
]


def test_emr_elect_and_mask_by_hand():
    emr = emr_merge(EMR_TAUS)
    assert close(emr.unified["a"], torch.tensor([0.3, -0.4]), tol=1e-7)
    assert close(emr.unified["b"], torch.tensor([-0.5]), tol=1e-7)
    assert [m["a"].tolist() + m["b"].tolist() for m in emr.masks] == [
        [True, True, False], [False, True, False], [True, False, True]]


@pytest.mark.parametrize("rescale, lams", [("tensor_mean", (1.0, 2.25, 1.0)), ("sum", (6 / 7, 7 / 4, 1.0))])
def test_emr_rescalers_and_task_vectors_by_hand(rescale, lams):
    emr = emr_merge(EMR_TAUS, rescale=rescale)
    assert emr.rescalers == pytest.approx(lams, abs=1e-6)
    tau2 = emr_task_vector(emr, 1)
    assert close(tau2["a"], torch.tensor([0.0, -0.4 * lams[1]]), tol=1e-6)
    assert close(tau2["b"], torch.tensor([0.0]))


def test_emr_tie_elects_minus_and_a_task_agreeing_nowhere_gets_zero():
    # Σ = 0.2 − 0.2 = 0: the authors' code elects −1, so only τ_2 agrees and τ_uni = −0.2;
    # τ_1 agrees nowhere (λ_1 = 0.2 / 0, taken as 1) and its vector is zero.
    emr = emr_merge([{"w": torch.tensor([0.2])}, {"w": torch.tensor([-0.2])}])
    assert close(emr.unified["w"], torch.tensor([-0.2]), tol=1e-7)
    assert [m["w"].item() for m in emr.masks] == [False, True]
    assert emr.rescalers == (1.0, 1.0)
    assert close(emr_task_vector(emr, 0)["w"], torch.zeros(1))


def test_emr_of_one_task_returns_it():
    tau = {"w": torch.tensor([[0.5, -1.0], [0.0, 2.0]]), "b": torch.tensor([-0.25])}
    emr = emr_merge([tau])
    assert emr.rescalers == (1.0,)
    assert all(close(emr_task_vector(emr, 0)[n], tau[n]) for n in tau)


def test_emr_storage_bits():
    # 8 tasks over 10⁶ parameters: 8 mask bits each, plus 8 float32 rescalers = 256 bits
    assert emr_storage_bits(8, 10**6) == pytest.approx(8 + 256 / 10**6)
