"""GHM-C and DGHM-C / DGHM-C* against slow references written from the equations.

The references below loop over elements, bins and groups in float64 Python and use nothing
from ``pathodet``. Test batches are built from chosen gradient norms ``g`` placed well inside
their bins, so float32 (library) and float64 (reference) agree on every bin and on every
``g >= lam`` decision; exact bin edges are tested separately with values that are exact in
float32 (``g`` = 0, 0.5, 1).
"""

from __future__ import annotations

import math

import pytest
import torch

from pathodet.losses import dghm_c_loss, dghm_groups, ghm_c_loss, ghm_weights

# ---------------------------------------------------------------- references (float64)


def softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def ref_bce(x: float, y: float) -> float:
    """-(y log p + (1 - y) log(1 - p)) with p = sigmoid(x), computed stably."""
    return y * softplus(-x) + (1.0 - y) * softplus(x)


def ref_bin(g: float, bins: int) -> int:
    """Bin b with b/bins <= g < (b+1)/bins; the last edge (g = 1) belongs to the last bin."""
    for b in range(bins):
        if b / bins <= g < (b + 1) / bins:
            return b
    assert g == 1.0
    return bins - 1


def ref_ghm(logits, targets, bins=10, momentum=0.0, acc_sum=None):
    """GHM-C as the reference implementation: returns (loss, dloss/dlogit list)."""
    xs, ys = [float(v) for v in logits], [float(v) for v in targets]
    n_el = len(xs)
    if n_el == 0:
        return 0.0, []
    g = [abs(sigmoid(x) - y) for x, y in zip(xs, ys, strict=True)]
    b_of = [ref_bin(gi, bins) for gi in g]
    count = [sum(1 for b in b_of if b == k) for k in range(bins)]
    n = sum(1 for c in count if c > 0)
    if momentum > 0:
        for k in range(bins):
            if count[k] > 0:
                acc_sum[k] = momentum * acc_sum[k] + (1 - momentum) * count[k]
        density = list(acc_sum)
    else:
        density = count
    beta = [n_el / (density[b] * n) for b in b_of]
    loss = sum(beta[i] * ref_bce(xs[i], ys[i]) for i in range(n_el)) / n_el
    grad = [beta[i] * (sigmoid(xs[i]) - ys[i]) / n_el for i in range(n_el)]
    return loss, grad


def ref_group(ap: bool, y: float, star: bool) -> str:
    if star:
        if ap and y > 0.5:
            return "AP_P"
        return "AP_N" if ap else "NP_N"
    return "noisy" if (ap and y < 0.5) else "clean"


def ref_dghm(logits, targets, ap_image, mu_n=2.0, mu_c=0.5, lam=0.9, bins=10, star=False):
    """DGHM-C (eq. 9-12) / DGHM-C*: returns (loss, dloss/dlogit list, beta list)."""
    xs, ys = [float(v) for v in logits], [float(v) for v in targets]
    aps = [bool(v) for v in ap_image]
    n_el = len(xs)
    if n_el == 0:
        return 0.0, [], []
    mu_of = {"noisy": mu_n, "clean": mu_c, "AP_P": mu_c, "AP_N": mu_n, "NP_N": mu_c}
    grp = [ref_group(a, y, star) for a, y in zip(aps, ys, strict=True)]
    g = [abs(sigmoid(x) - y) for x, y in zip(xs, ys, strict=True)]
    b_of = [ref_bin(gi, bins) for gi in g]
    groups = sorted(set(grp))
    m = len(groups)
    count = {d: [0] * bins for d in groups}
    for d, b in zip(grp, b_of, strict=True):
        count[d][b] += 1
    n_d = {d: sum(1 for c in count[d] if c > 0) for d in groups}
    beta = []
    for i in range(n_el):
        d = grp[i]
        gd = count[d][b_of[i]] * n_d[d]
        gamma = mu_of[d] if g[i] >= lam else 1.0
        beta.append(n_el / gd**gamma)
    loss = sum(beta[i] * ref_bce(xs[i], ys[i]) for i in range(n_el)) / (m * n_el)
    grad = [beta[i] * (sigmoid(xs[i]) - ys[i]) / (m * n_el) for i in range(n_el)]
    return loss, grad, beta


# ---------------------------------------------------------------- batch builders


def logits_for(g: list[float], y: list[float]) -> torch.Tensor:
    """Float32 logits whose gradient norm |sigmoid(x) - y| is g (0 < g < 1, hard y)."""
    out = []
    for gi, yi in zip(g, y, strict=True):
        p = gi if yi < 0.5 else 1.0 - gi
        out.append(math.log(p / (1.0 - p)))
    return torch.tensor(out, dtype=torch.float32)


def random_batch(seed: int, n: int = 240, bins: int = 10, pos_frac: float = 0.25):
    """Logits (float32, g inside bins), hard targets and AP flags; every kind of element."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.randint(0, bins, (n,), generator=gen)
    u = 0.1 + 0.8 * torch.rand(n, generator=gen, dtype=torch.float64)
    g = ((b + u) / bins).tolist()
    y = (torch.rand(n, generator=gen) < pos_frac).float()
    ap = torch.rand(n, generator=gen) < 0.6
    return logits_for(g, y.tolist()), y, ap


def tensors_close(a: torch.Tensor, ref: float | list[float], rtol=1e-5, atol=1e-7) -> None:
    torch.testing.assert_close(
        a.double(), torch.as_tensor(ref, dtype=torch.float64), rtol=rtol, atol=atol
    )


# ---------------------------------------------------------------- GHM-C


@pytest.mark.parametrize(("bins", "seed"), [(10, 0), (10, 1), (7, 2), (30, 3), (1, 4)])
def test_ghm_matches_reference(bins, seed):
    logits, y, _ = random_batch(seed, bins=bins)
    loss = ghm_c_loss(logits, y, bins=bins)
    ref, _ = ref_ghm(logits, y, bins)
    tensors_close(loss, ref)


def test_ghm_weights_at_exact_bin_edges():
    # g = 0.5 (logit 0) sits on an inner edge and belongs to the upper bin; g = 1 (the last
    # edge) belongs to the last bin; g = 0 to the first.
    logits = torch.tensor([0.0, 0.0, 100.0, 100.0, -100.0])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    w, total = ghm_weights((logits.sigmoid() - y).abs(), bins=10)
    # bins: 5, 5, 0, 9, 9 -> R = 2, 2, 1, 2, 2 and n = 3
    tensors_close(w, [1 / 6, 1 / 6, 1 / 3, 1 / 6, 1 / 6], rtol=1e-6)
    assert float(total) == 5
    w2, _ = ghm_weights((logits.sigmoid() - y).abs(), bins=2)
    # bins=2: 0.5 and 1.0 both in bin 1, 0 in bin 0 -> R = 4, 4, 1, 4, 4 and n = 2
    tensors_close(w2, [1 / 8, 1 / 8, 1 / 2, 1 / 8, 1 / 8], rtol=1e-6)
    tensors_close(ghm_c_loss(logits, y, bins=10), ref_ghm(logits, y, 10)[0])


def test_ghm_weights_sum_to_one_per_batch():
    # sum_i 1 / (R(b_i) n) = sum over non-empty bins of R / (R n) = 1
    logits, y, _ = random_batch(5)
    w, total = ghm_weights((logits.sigmoid() - y).abs(), bins=10)
    assert float(total) == len(y)
    assert w.sum().item() == pytest.approx(1.0, rel=1e-5)


def test_ghm_gradient_is_beta_times_residual():
    logits, y, _ = random_batch(6)
    x = logits.clone().requires_grad_(True)
    ghm_c_loss(x, y).backward()
    _, grad = ref_ghm(logits, y)
    tensors_close(x.grad, grad, rtol=1e-4, atol=1e-9)
    assert (x.grad != 0).all()


def test_ghm_momentum_two_steps():
    m, bins = 0.75, 10
    l1, y1, _ = random_batch(7, n=120)
    # second batch: nothing in bins 0 and 1, so those accumulators must not move
    gen = torch.Generator().manual_seed(8)
    b2 = torch.randint(2, bins, (90,), generator=gen)
    g2 = ((b2 + 0.5) / bins).tolist()
    y2 = (torch.rand(90, generator=gen) < 0.3).float()
    l2 = logits_for(g2, y2.tolist())

    acc = torch.zeros(bins)
    ref_acc = [0.0] * bins
    loss1 = ghm_c_loss(l1, y1, bins, momentum=m, acc_sum=acc)
    ref1, _ = ref_ghm(l1, y1, bins, m, ref_acc)
    tensors_close(loss1, ref1)
    tensors_close(acc, ref_acc, rtol=1e-6)
    acc_after_1 = acc.clone()

    x2 = l2.clone().requires_grad_(True)
    loss2 = ghm_c_loss(x2, y2, bins, momentum=m, acc_sum=acc)
    ref2, grad2 = ref_ghm(l2, y2, bins, m, ref_acc)
    tensors_close(loss2, ref2)
    tensors_close(acc, ref_acc, rtol=1e-6)
    assert torch.equal(acc[:2], acc_after_1[:2])  # empty bins keep their history
    assert not torch.allclose(acc[2:], acc_after_1[2:])
    # the history changes the second step: it differs from a momentum-free step
    assert abs(loss2.item() - ghm_c_loss(l2, y2, bins).item()) > 1e-3 * abs(loss2.item())
    loss2.backward()
    tensors_close(x2.grad, grad2, rtol=1e-4, atol=1e-9)


def test_ghm_momentum_needs_buffer_and_zero_momentum_ignores_it():
    logits, y, _ = random_batch(9, n=20)
    with pytest.raises(ValueError):
        ghm_c_loss(logits, y, momentum=0.5)
    acc = torch.full((10,), 3.0)
    plain = ghm_c_loss(logits, y, momentum=0.0, acc_sum=acc)
    assert torch.equal(acc, torch.full((10,), 3.0))
    tensors_close(plain, ref_ghm(logits, y)[0])


def test_ghm_count_reduce_hook_sees_counts():
    # a reduce that doubles the counts (two identical ranks) halves every weight
    logits, y, _ = random_batch(10, n=60)
    seen = []

    def reduce(c):
        seen.append(c.clone())
        return 2 * c

    loss = ghm_c_loss(logits, y, reduce=reduce)
    assert len(seen) == 1 and seen[0].sum().item() == 60
    tensors_close(loss, ref_ghm(logits, y)[0] / 2)


def test_ghm_rejects_bad_shapes():
    with pytest.raises(ValueError):
        ghm_c_loss(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError):
        ghm_c_loss(torch.zeros(2, 2), torch.zeros(2, 2))


# ---------------------------------------------------------------- DGHM-C / DGHM-C*


def test_dghm_outlier_threshold_is_inclusive():
    # g = 0.5 exactly (logit 0) with lam = 0.5 is an outlier: gamma = mu
    logits = torch.tensor([0.0, 0.0, 0.0, -1.7346, 0.0, 0.0])
    y = torch.zeros(6)
    ap = torch.tensor([True, True, True, True, False, False])
    for star in (False, True):
        loss = dghm_c_loss(logits, y, ap, mu_n=2.0, mu_c=0.5, lam=0.5, star=star)
        ref, _, beta = ref_dghm(logits, y, ap, 2.0, 0.5, 0.5, 10, star)
        tensors_close(loss, ref)
        # noisy: GD = 3 * 2 -> beta = 6 / 36; clean: GD = 2 * 1 -> beta = 6 / sqrt(2)
        assert beta[0] == pytest.approx(6 / 36) and beta[4] == pytest.approx(6 / math.sqrt(2))
    grads = []
    for lam in (0.5, 0.51):
        x = logits.clone().requires_grad_(True)
        loss = dghm_c_loss(x, y, ap, mu_n=2.0, mu_c=0.5, lam=lam)
        tensors_close(loss, ref_dghm(logits, y, ap, 2.0, 0.5, lam)[0])
        loss.backward()
        grads.append(x.grad)
    # just above lam nothing is an outlier: beta = 6 / 6 (noisy) and 6 / 2 (clean)
    torch.testing.assert_close(grads[0][:3], grads[1][:3] / 6)
    torch.testing.assert_close(grads[0][4:], grads[1][4:] * math.sqrt(2))


def test_dghm_groups_table():
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    ap = torch.tensor([True, True, False, False])
    group, mu = dghm_groups(y, ap, mu_n=2.0, mu_c=0.5, star=False)
    names = ["clean", "noisy"]
    mus = {"clean": 0.5, "noisy": 2.0}
    assert [names[k] for k in group.tolist()] == [
        ref_group(a, t, False) for a, t in zip(ap, y, strict=True)
    ]
    assert [mu[k].item() for k in group.tolist()] == [
        mus[ref_group(a, t, False)] for a, t in zip(ap, y, strict=True)
    ]
    group, mu = dghm_groups(y, ap, mu_n=2.0, mu_c=0.5, star=True)
    names = ["AP_P", "AP_N", "NP_N"]
    mus = {"AP_P": 0.5, "AP_N": 2.0, "NP_N": 0.5}
    # the (rare) positive of an NP image counts as NP_N
    assert [names[k] for k in group.tolist()] == ["AP_P", "AP_N", "NP_N", "NP_N"]
    assert [mu[k].item() for k in group.tolist()] == [
        mus[n] for n in ["AP_P", "AP_N", "NP_N", "NP_N"]
    ]


DGHM_CASES = [
    # star, mu_n, mu_c, lam, bins, seed
    (False, 2.0, 0.5, 0.9, 10, 0),
    (True, 2.0, 0.5, 0.9, 10, 1),
    (False, 1.0, 1.0, 0.9, 10, 2),
    (True, 3.0, 0.25, 0.6, 5, 3),
    (False, 1.5, 0.0, 0.4, 10, 4),
    (True, 2.0, 0.5, 1.0, 10, 5),
]


@pytest.mark.parametrize(("star", "mu_n", "mu_c", "lam", "bins", "seed"), DGHM_CASES)
def test_dghm_matches_reference(star, mu_n, mu_c, lam, bins, seed):
    logits, y, ap = random_batch(100 + seed, bins=bins)
    loss = dghm_c_loss(logits, y, ap, mu_n, mu_c, lam, bins, star=star)
    ref, _, beta = ref_dghm(logits, y, ap, mu_n, mu_c, lam, bins, star)
    tensors_close(loss, ref)
    if lam < 1 and (mu_n != 1 or mu_c != 1):
        assert len(set(beta)) > bins  # outliers really get their own exponent


@pytest.mark.parametrize(("star", "mu_n", "mu_c", "lam", "bins", "seed"), DGHM_CASES)
def test_dghm_gradient_is_beta_times_residual(star, mu_n, mu_c, lam, bins, seed):
    logits, y, ap = random_batch(200 + seed, bins=bins)
    x = logits.clone().requires_grad_(True)
    dghm_c_loss(x, y, ap, mu_n, mu_c, lam, bins, star=star).backward()
    _, grad, _ = ref_dghm(logits, y, ap, mu_n, mu_c, lam, bins, star)
    assert torch.isfinite(x.grad).all()
    tensors_close(x.grad, grad, rtol=1e-4, atol=1e-10)
    assert (x.grad != 0).all()


@pytest.mark.parametrize("star", [False, True])
@pytest.mark.parametrize("which", ["np_only", "ap_neg_only", "ap_pos_only"])
def test_dghm_one_group_mu_one_equals_ghm(which, star):
    logits, y, ap = random_batch(11)
    if which == "np_only":
        y, ap = torch.zeros_like(y), torch.zeros_like(ap)
    elif which == "ap_neg_only":
        y, ap = torch.zeros_like(y), torch.ones_like(ap)
    else:
        y, ap = torch.ones_like(y), torch.ones_like(ap)
    for lam in (0.0, 0.5, 0.9):
        d = dghm_c_loss(logits, y, ap, mu_n=1.0, mu_c=1.0, lam=lam, star=star)
        torch.testing.assert_close(d, ghm_c_loss(logits, y), rtol=1e-6, atol=0)


def test_dghm_clean_group_of_ap_pos_and_np_equals_ghm_without_star():
    # AP positives and NP negatives form one (clean) group in DGHM-C, two in DGHM-C*
    logits, y, ap = random_batch(12)
    ap = y > 0.5
    d = dghm_c_loss(logits, y, ap, mu_n=1.0, mu_c=1.0)
    torch.testing.assert_close(d, ghm_c_loss(logits, y), rtol=1e-6, atol=0)
    d_star = dghm_c_loss(logits, y, ap, mu_n=1.0, mu_c=1.0, star=True)
    expected = (ghm_c_loss(logits[ap], y[ap]) + ghm_c_loss(logits[~ap], y[~ap])) / 2
    torch.testing.assert_close(d_star, expected, rtol=1e-6, atol=0)
    assert abs(d_star.item() - d.item()) > 1e-4 * d.item()


def test_dghm_mu_one_is_mean_of_per_group_ghm():
    logits, y, ap = random_batch(13)
    noisy = ap & (y < 0.5)
    d = dghm_c_loss(logits, y, ap, mu_n=1.0, mu_c=1.0)
    expected = (ghm_c_loss(logits[noisy], y[noisy]) + ghm_c_loss(logits[~noisy], y[~noisy])) / 2
    torch.testing.assert_close(d, expected, rtol=1e-6, atol=0)
    parts = [ap & (y > 0.5), ap & (y < 0.5), ~ap]
    d_star = dghm_c_loss(logits, y, ap, mu_n=1.0, mu_c=1.0, star=True)
    expected_star = sum(ghm_c_loss(logits[p], y[p]) for p in parts) / 3
    torch.testing.assert_close(d_star, expected_star, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("mu_n", "mu_c"), [(2.0, 0.5), (1.0, 1.0), (3.0, 0.0)])
def test_dghm_star_equals_dghm_when_a_clean_part_is_empty(mu_n, mu_c):
    logits, y, ap = random_batch(14)
    # no AP positives: DGHM-C* groups (AP_N, NP_N) are DGHM-C's (noisy, clean)
    y_no_app = torch.where(ap, torch.zeros_like(y), y)
    for yy, aa in ((y_no_app, ap), (y, torch.ones_like(ap))):  # ... or no NP image at all
        a = dghm_c_loss(logits, yy, aa, mu_n, mu_c, star=False)
        b = dghm_c_loss(logits, yy, aa, mu_n, mu_c, star=True)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("mu_n", "mu_c"), [(2.0, 0.5), (1.0, 1.0)])
def test_dghm_star_scales_noisy_gradients_by_group_count(mu_n, mu_c):
    # AP_N is one group in both; its beta is the same, only M changes from 2 to 3.
    logits, y, ap = random_batch(15)
    noisy = ap & (y < 0.5)
    assert (ap & (y > 0.5)).any() and (~ap).any() and noisy.any()
    grads = []
    for star in (False, True):
        x = logits.clone().requires_grad_(True)
        dghm_c_loss(x, y, ap, mu_n, mu_c, star=star).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1][noisy], grads[0][noisy] * 2 / 3, rtol=1e-5, atol=1e-12)
    assert not torch.allclose(grads[1][~noisy], grads[0][~noisy] * 2 / 3)


def test_dghm_outliers_down_weighted_if_noisy_up_weighted_if_clean():
    logits, y, ap = random_batch(16)
    g = (logits.sigmoid() - y).abs()
    outlier = g >= 0.9
    noisy = ap & (y < 0.5)
    grads = {}
    for key, (mu_n, mu_c) in {"ghm": (1.0, 1.0), "dghm": (2.0, 0.5)}.items():
        x = logits.clone().requires_grad_(True)
        dghm_c_loss(x, y, ap, mu_n, mu_c, lam=0.9).backward()
        grads[key] = x.grad.abs()
    # GD = R * n > 1 for these bins, so GD**2 > GD and GD**0.5 < GD
    assert (outlier & noisy).sum() > 2 and (outlier & ~noisy).sum() > 2
    assert (grads["dghm"][outlier & noisy] < grads["ghm"][outlier & noisy]).all()
    assert (grads["dghm"][outlier & ~noisy] > grads["ghm"][outlier & ~noisy]).all()
    torch.testing.assert_close(grads["dghm"][~outlier], grads["ghm"][~outlier])


def test_dghm_count_reduce_hook():
    logits, y, ap = random_batch(17, n=80)
    d = dghm_c_loss(logits, y, ap, 1.0, 1.0, reduce=lambda c: 2 * c)
    tensors_close(d, ref_dghm(logits, y, ap, 1.0, 1.0)[0] / 2)


def test_dghm_rejects_bad_shapes():
    with pytest.raises(ValueError):
        dghm_c_loss(torch.zeros(4), torch.zeros(4), torch.zeros(3, dtype=torch.bool))


# ---------------------------------------------------------------- degenerate batches


def degenerate(kind: str):
    gen = torch.Generator().manual_seed(42)
    n = 64
    if kind == "empty":
        return torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    if kind == "all_np":
        return torch.randn(n, generator=gen) * 3, torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    if kind == "no_positives":
        ap = torch.rand(n, generator=gen) < 0.5
        return torch.randn(n, generator=gen) * 3, torch.zeros(n), ap
    if kind == "single_bin":  # every g in bin 3, both labels, both image kinds
        y = (torch.rand(n, generator=gen) < 0.5).float()
        ap = torch.rand(n, generator=gen) < 0.5
        return logits_for([0.35] * n, y.tolist()), y, ap
    if kind == "single_outlier_bin":  # every g in the last bin (>= lam)
        y = (torch.rand(n, generator=gen) < 0.5).float()
        ap = torch.rand(n, generator=gen) < 0.5
        return logits_for([0.95] * n, y.tolist()), y, ap
    if kind == "extreme":  # +-100 logits, right and wrong
        x = torch.tensor([100.0, -100.0] * (n // 2))
        y = (torch.arange(n) % 4 < 2).float()
        ap = torch.arange(n) % 3 == 0
        return x, y, ap
    if kind == "single":
        return torch.tensor([0.3]), torch.tensor([1.0]), torch.tensor([True])
    raise AssertionError(kind)


DEGENERATE = [
    "empty",
    "all_np",
    "no_positives",
    "single_bin",
    "single_outlier_bin",
    "extreme",
    "single",
]


@pytest.mark.parametrize("kind", DEGENERATE)
@pytest.mark.parametrize("loss_name", ["ghm", "ghm_momentum", "dghm", "dghm_star"])
def test_degenerate_batches_are_finite_and_match_reference(loss_name, kind):
    logits, y, ap = degenerate(kind)
    x = logits.clone().requires_grad_(True)
    if loss_name == "ghm":
        loss = ghm_c_loss(x, y)
        ref, grad = ref_ghm(logits, y)
    elif loss_name == "ghm_momentum":
        acc, ref_acc = torch.zeros(10), [0.0] * 10
        loss = ghm_c_loss(x, y, momentum=0.9, acc_sum=acc)
        ref, grad = ref_ghm(logits, y, 10, 0.9, ref_acc)
        assert torch.isfinite(acc).all()
    else:
        star = loss_name == "dghm_star"
        loss = dghm_c_loss(x, y, ap, star=star)
        ref, grad, _ = ref_dghm(logits, y, ap, star=star)
    assert loss.dim() == 0 and torch.isfinite(loss)
    tensors_close(loss, ref)
    loss.backward()
    assert x.grad is not None and x.grad.shape == logits.shape
    assert torch.isfinite(x.grad).all()
    tensors_close(x.grad, grad, rtol=1e-4, atol=1e-10)
    if kind == "empty":
        assert loss.item() == 0.0


def test_single_bin_closed_forms():
    # one bin, below lam: beta = N / R_d per group, so the loss is the mean over groups of
    # each group's mean BCE; GHM-C is the plain mean BCE.
    logits, y, ap = degenerate("single_bin")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    torch.testing.assert_close(ghm_c_loss(logits, y), bce.mean())
    noisy = ap & (y < 0.5)
    expected = (bce[noisy].mean() + bce[~noisy].mean()) / 2
    torch.testing.assert_close(dghm_c_loss(logits, y, ap), expected)
