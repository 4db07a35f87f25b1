"""CART and AdaRank against values worked out by hand, and against a second route to the same
number where one exists."""
from __future__ import annotations

import math

import pytest
import torch

from calm.merging.adarank import Components, adarank, gradients, initial_logits
from calm.merging.cart import cart, kept_rank
from calm.merging.task_arithmetic import task_arithmetic
from calm.merging.tsv import tsv_merge
from calm.merging.weight_averaging import weight_averaging

D = torch.float64


def rotation(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s], [s, c]], dtype=D)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9) -> bool:
    return torch.allclose(a, b.to(a.dtype), atol=tol, rtol=0)


# --- CART ----------------------------------------------------------------------------------------

def test_cart_by_hand_on_a_2x2_example():
    # τ_t = Q D_t Rᵀ with D = diag(5, 1), diag(1, 4), diag(0, 1): τ̄ = Q diag(2, 2) Rᵀ; the centred
    # D's are diag(3, −1), diag(−1, 2), diag(−2, −1), whose rank-1 parts (k = max(1, ⌊0.5·2⌋) = 1)
    # are diag(3, 0), diag(0, 2), diag(−2, 0), summing to diag(1, 2). With λ = 2:
    # τ = Q (diag(2, 2) + 2 diag(1, 2)) Rᵀ = Q diag(4, 6) Rᵀ. The bias gets the mean.
    q, r = rotation(30), rotation(-50)
    ds = [torch.diag(torch.tensor(d, dtype=D)) for d in ([5.0, 1.0], [1.0, 4.0], [0.0, 1.0])]
    vectors = [{"w": q @ d @ r.T, "b": torch.tensor([b], dtype=D)} for d, b in zip(ds, (3.0, 0.0, 0.0))]
    out = cart(vectors, lam=2.0, rank_ratio=0.5)
    assert close(out["w"], q @ torch.diag(torch.tensor([4.0, 6.0], dtype=D)) @ r.T)
    assert close(out["b"], torch.tensor([1.0]))


def test_cart_at_full_rank_is_weight_averaging():
    # The centred vectors sum to zero, so keeping all their components adds nothing to the mean.
    vectors = [{"w": randn(5, 3, seed=s), "b": randn(3, seed=10 + s)} for s in range(4)]
    out, mean = cart(vectors, lam=2.0, rank_ratio=1.0), weight_averaging(vectors)
    assert all(close(out[n], mean[n]) for n in mean)


def test_cart_kept_rank_and_exclude():
    assert kept_rank((768, 3072), 0.12) == 92 and kept_rank((10, 10), 0.16) == 1  # ⌊·⌋, not rounded
    assert kept_rank((4, 4), 0.1) == 1  # never below one
    vectors = [{"embed.weight": randn(4, 4, seed=s)} for s in range(3)]
    assert close(cart(vectors, rank_ratio=0.25)["embed.weight"], weight_averaging(vectors)["embed.weight"])
    with pytest.raises(ValueError, match="rank_ratio"):
        cart(vectors, rank_ratio=0.0)


# --- AdaRank -------------------------------------------------------------------------------------

def linear_loss(c: torch.Tensor):
    """L(θ) = ⟨C, θ_w⟩: ∂L/∂θ_w = C whatever θ."""
    return lambda step: [("task", lambda params: (c * params["w"]).sum())]


@pytest.mark.parametrize("steps,kept", [(2, [True, True]), (3, [True, False])])
def test_adarank_drops_the_component_that_raises_the_loss_on_a_rank_2_example(steps, kept):
    # τ = diag(3, 1): components e1e1ᵀ (s = 3) and e2e2ᵀ (s = 1). With G = C = diag(−1, +1),
    # ∂L/∂B = λ s_i u_iᵀ C v_i = 0.3·(−3, +1): the first lowers the loss, the second raises it. Each
    # Adam step moves a logit by lr against its gradient's sign (m̂/√v̂ = ±1 for a gradient of
    # constant sign), so the second logit goes 0.1 → 0.06 → 0.02 → −0.02: kept after two steps of
    # lr 0.04, dropped after three. τ is then λ U diag(B ⊙ s) Vᵀ = 0.3 diag(3, 0).
    theta0 = {"w": torch.zeros(2, 2, dtype=D)}
    tau = {"w": torch.diag(torch.tensor([3.0, 1.0], dtype=D))}
    out = adarank(theta0, [tau], linear_loss(torch.diag(torch.tensor([-1.0, 1.0], dtype=D))),
                  base="task_arithmetic", steps=steps, lr=0.04, learn_coefficients=False, progress=False)
    assert out.masks["w"][0].tolist() == kept
    assert out.ranks() == [{"w": sum(kept)}]
    assert close(out.tau["w"], 0.3 * torch.diag(torch.tensor([3.0, 1.0 * kept[1]], dtype=D)))
    assert close(out.coefficients, torch.tensor([[0.3]], dtype=D))


def test_adarank_mask_starts_on_the_bases_share_of_components():
    parts = [{"w": Components(torch.eye(4), torch.ones(4), torch.eye(4)), "b": torch.zeros(4)}]
    assert torch.equal(initial_logits(parts, 0.5)["w"], torch.tensor([[0.1, 0.1, -0.1, -0.1]]))
    assert torch.equal(initial_logits(parts, 0.16)["w"], torch.full((1, 4), -0.1))  # ⌊0.64⌋ = 0, as in the code


def test_adarank_gradients_match_autograd_through_the_authors_straight_through_mask():
    # The authors' forward: s_masked = p ⊙ s + ((p > 0.5) − p) ⊙ s, the second term detached,
    # p = σ(m / T); θ = Σ_t λ_t U diag(s_masked) Vᵀ. Autograd of a quadratic loss through it must
    # give the closed-form gradients (∂L/∂λ_t and ∂L/∂m_t) from G = ∂L/∂θ.
    T, temp = 2, 10.0
    mats = [randn(4, 3, seed=s) for s in range(T)]
    svds = [torch.linalg.svd(m, full_matrices=False) for m in mats]
    m = torch.tensor([[0.3, -0.2, 0.1], [-0.4, 0.5, 0.2]], dtype=D, requires_grad=True)
    lam = torch.tensor([[0.7], [1.3]], dtype=D, requires_grad=True)
    c = randn(4, 3, seed=9)

    def loss_of(theta):
        return (c * theta).sum() + (theta ** 2).sum()

    theta = 0
    for t, (u, s, vh) in enumerate(svds):
        p = torch.sigmoid(m[t] / temp)
        s_masked = p * s + (((p > 0.5).to(D) - p) * s).detach()
        theta = theta + lam[t, 0] * (u * s_masked) @ vh
    loss_of(theta).backward()
    theta_leaf = theta.detach().requires_grad_(True)
    loss_of(theta_leaf).backward()

    parts = [{"w": Components(u, s, vh)} for u, s, vh in svds]
    lam_mine = lam.detach().clone()
    logits = {"w": m.detach().clone()}
    lam_mine.grad, logits["w"].grad = torch.zeros_like(lam_mine), torch.zeros_like(logits["w"])
    gradients(["w"], parts, lam_mine, logits, {"w": logits["w"] > 0}, {"w": theta_leaf.grad}, temp)
    assert close(lam_mine.grad, lam.grad, 1e-9)
    assert close(logits["w"].grad, m.grad, 1e-9)


def softmax_model(seed: int = 0):
    """A linear softmax classifier: logits = x Wᵀ + b, over fixed inputs per task."""
    theta0 = {"w": 0.1 * randn(3, 4, seed=seed), "b": torch.zeros(3, dtype=D)}
    taus = [{"w": randn(3, 4, seed=seed + 1 + t), "b": 0.1 * randn(3, seed=seed + 5 + t)} for t in range(2)]
    xs = [randn(16, 4, seed=seed + 20 + t) for t in range(2)]

    def loss_terms(step):
        for t, x in enumerate(xs):
            def entropy(params, x=x):
                logp = torch.log_softmax(x @ params["w"].T + params["b"], dim=1)
                return -(logp.exp() * logp).sum(dim=1).mean()
            yield f"task{t}", entropy

    return theta0, taus, loss_terms


@pytest.mark.parametrize("base", ["task_arithmetic", "tsv", "cart"])
def test_adarank_entropy_falls_over_its_steps(base):
    theta0, taus, loss_terms = softmax_model()
    out = adarank(theta0, taus, loss_terms, base=base, steps=30, lr=0.05, progress=False)
    losses = [row["loss"] for row in out.trace]
    assert losses[-1] < 0.9 * losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 0.8 * (len(losses) - 1)


@pytest.mark.parametrize("base,ratio,expected", [
    ("task_arithmetic", 1.0, lambda taus: task_arithmetic(taus, lam=0.3)),
    ("tsv", 1.0, lambda taus: tsv_merge(taus, alpha=1.0, exclude=("embed",))),
    ("cart", 0.5, lambda taus: cart(taus, lam=2.3, rank_ratio=0.5)),
])
def test_adarank_before_it_learns_is_its_base(base, ratio, expected):
    # lr = 0: the masks stay where they start, λ at the base's value, so the merge is the base's.
    taus = [{"w": randn(4, 4, seed=t), "b": randn(4, seed=7 + t), "embed": randn(4, 4, seed=20 + t)}
            for t in range(3)]
    theta0 = {n: torch.zeros_like(v) for n, v in taus[0].items()}

    def terms(step):
        yield "task", lambda params: sum((p ** 2).sum() for p in params.values())

    out = adarank(theta0, taus, terms, base=base, steps=1, lr=0.0, initial_rank_ratio=ratio, progress=False)
    want = expected(taus)
    assert all(close(out.tau[n], want[n], 1e-8) for n in want)


def test_adarank_unknown_base():
    theta0, taus, loss_terms = softmax_model()
    with pytest.raises(ValueError, match="unknown AdaRank base 'ties'"):
        adarank(theta0, taus, loss_terms, base="ties", steps=1, progress=False)


def test_adarank_config_takes_the_bases_starting_values():
    from calm.config.baselines import ADARANK_BASES, AdaRankConfig
    from calm.merging.adarank import BASE_DEFAULTS
    assert ADARANK_BASES == BASE_DEFAULTS
    assert (AdaRankConfig(base="task_arithmetic").prior, AdaRankConfig(base="task_arithmetic").initial_rank_ratio) == (0.3, 1.0)
    assert AdaRankConfig(base="tsv", prior=0.5).prior == 0.5
    assert (AdaRankConfig().prior, AdaRankConfig().initial_rank_ratio) == (2.3, 0.16)
