"""The OPD maths against known answers: F.kl_div, analytic policy gradients, reference top-k losses, hand examples."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from opd_cli.core import maths
from opd_cli.train.config import TOPK_SUPPORTS


def test_estimator_averages_to_exact_reverse_kl():
    g = torch.Generator().manual_seed(0)
    V, n = 7, 400_000
    logits_s, logits_t = torch.randn(V, generator=g) * 2, torch.randn(V, generator=g) * 2
    logp, logq = torch.log_softmax(logits_s, -1), torch.log_softmax(logits_t, -1)
    exact = F.kl_div(logq, logp, log_target=True, reduction="sum")  # KL(p || q)
    x = torch.multinomial(logp.exp(), n, replacement=True, generator=g)
    est = maths.kl_estimate_BT(logp[x], logq[x]).mean()
    assert est.item() == pytest.approx(exact.item(), abs=4e-3)
    assert maths.reverse_kl_full_BT(logits_s[None, None], logits_t[None, None]).item() == pytest.approx(exact.item(), rel=1e-5)


def test_sampled_loss_value_and_gradient_at_ratio_one():
    g = torch.Generator().manual_seed(1)
    B, T, V = 3, 5, 11
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    teacher = torch.randn(B, T, V, generator=g)
    ids = torch.randint(V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    logp = maths.token_logprobs_BT(logits, ids)
    old = logp.detach().clone()  # ratio exactly 1
    logq = maths.token_logprobs_BT(teacher, ids)
    loss = maths.sampled_loss(logp, old, logq, mask, B)
    k = old - logq
    assert loss.item() == pytest.approx(((k * mask).sum() / B).item(), rel=1e-6)  # -sum(rho*A) = sum k at rho=1
    loss.backward()
    # analytic policy gradient: -(1/B) sum_t A_t grad log p(x_t), A_t = -k_t; d log p(x)/d logits = onehot(x) - p
    p = torch.softmax(logits.detach(), -1)
    onehot = F.one_hot(ids, V).float()
    ref = ((k * mask)[..., None] * (onehot - p)) / B
    assert torch.allclose(logits.grad, ref, atol=1e-6)


def _ref_topk(ls, lt, k, support):
    out = torch.zeros(ls.shape[:-1])
    for idx in itertools.product(*(range(n) for n in ls.shape[:-1])):
        p, q = torch.softmax(ls[idx], -1), torch.softmax(lt[idx], -1)
        sp, sq = set(p.topk(k).indices.tolist()), set(q.topk(k).indices.tolist())
        s = {"student": sp, "overlap": sp & sq, "nonoverlap": sp ^ sq}[support]
        if not s:
            continue
        s = sorted(s)
        pb, qb = p[s] / p[s].sum(), q[s] / q[s].sum()
        out[idx] = (pb * (pb.log() - qb.log())).sum()
    return out


@pytest.mark.parametrize("support", TOPK_SUPPORTS)
def test_topk_loss_matches_reference(support):
    g = torch.Generator().manual_seed(2)
    ls, lt = torch.randn(2, 4, 20, generator=g) * 2, torch.randn(2, 4, 20, generator=g) * 2
    got = maths.reverse_kl_topk_BT(ls, lt, k=5, support=support)
    assert torch.allclose(got, _ref_topk(ls, lt, 5, support), atol=1e-5)


def test_full_and_topk_with_k_equal_vocab_agree():
    g = torch.Generator().manual_seed(3)
    ls, lt = torch.randn(2, 3, 9, generator=g), torch.randn(2, 3, 9, generator=g)
    full = maths.reverse_kl_full_BT(ls, lt)
    ref = (torch.softmax(ls, -1) * (torch.log_softmax(ls, -1) - torch.log_softmax(lt, -1))).sum(-1)
    assert torch.allclose(full, ref, atol=1e-6)
    assert torch.allclose(maths.reverse_kl_topk_BT(ls, lt, k=9, support="student"), full, atol=1e-5)
    assert torch.allclose(maths.reverse_kl_full_BT(ls, ls), torch.zeros(2, 3), atol=1e-6)


def test_overlap_metrics_hand_example():
    # student p = [.5, .3, .2, 0-ish], teacher q = [.1, .6, .3, 0-ish]; k = 2: S_p = {0, 1}, S_q = {1, 2}, overlap {1}
    p = torch.tensor([0.5, 0.3, 0.2, 1e-9])
    q = torch.tensor([0.1, 0.6, 0.3, 1e-9])
    m = maths.overlap_metrics_BT(p.log()[None, None], q.log()[None, None], k=2)
    assert m["overlap_ratio"].item() == pytest.approx(0.5)
    assert m["overlap_adv"].item() == pytest.approx(0.0, abs=1e-6)  # one token: both renormalise to 1
    assert m["overlap_mass_student"].item() == pytest.approx(0.3, abs=1e-6)
    assert m["overlap_mass_teacher"].item() == pytest.approx(0.6, abs=1e-6)
    hp = -(p * p.log()).sum().item()
    hq = -(q * q.log()).sum().item()
    assert m["entropy_student"].item() == pytest.approx(hp, abs=1e-5)
    assert m["entropy_gap"].item() == pytest.approx(abs(hq - hp), abs=1e-5)
    # k = 3: overlap {0, 1, 2}; p̄ = p, q̄ = q on it; advantage = mean_v p(v) (log q(v) - log p(v))
    m3 = maths.overlap_metrics_BT(p.log()[None, None], q.log()[None, None], k=3)
    pv, qv = p[:3] / p[:3].sum(), q[:3] / q[:3].sum()
    assert m3["overlap_ratio"].item() == pytest.approx(1.0)
    assert m3["overlap_adv"].item() == pytest.approx((pv * (qv.log() - pv.log())).sum().item() / 3, abs=1e-5)


def test_masks_give_exactly_zero_gradient_outside():
    g = torch.Generator().manual_seed(4)
    B, T, V = 2, 10, 6
    lengths = torch.tensor([10, 7])
    ids = torch.randint(V, (B, T), generator=g)
    teacher = torch.randn(B, T, V, generator=g)
    cases = {
        "prefix": (maths.prefix_mask_BT(lengths, T, 4), lambda t, n: t < 4),
        "window": (maths.window_mask_BT(lengths, T, 3, 6), lambda t, n: 3 <= t < 6),
        "tail": (maths.tail_mask_BT(lengths, T, 3), lambda t, n: t >= n - 3),
    }
    for name, (mask, rule) in cases.items():
        for loss_kind in ("sampled", "full", "topk"):
            logits = torch.randn(B, T, V, generator=g, requires_grad=True)
            if loss_kind == "sampled":
                logp = maths.token_logprobs_BT(logits, ids)
                loss = maths.sampled_loss(logp, logp.detach(), maths.token_logprobs_BT(teacher, ids), mask, B)
            else:
                loss = maths.sum_over_seqs(maths.divergence_BT(logits, teacher, loss_kind, k=3), mask.float(), B)
            loss.backward()
            for b in range(B):
                for t in range(T):
                    inside = t < lengths[b] and rule(t, int(lengths[b]))
                    assert bool(mask[b, t]) == inside, (name, b, t)
                    gnorm = logits.grad[b, t].abs().sum().item()
                    assert (gnorm > 0) if inside else (gnorm == 0.0), (name, loss_kind, b, t)


def test_chunked_logprobs_match_unchunked_with_gradients():
    g = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(8, 13, bias=False)
    h = torch.randn(2, 11, 8, generator=g, requires_grad=True)
    ids = torch.randint(13, (2, 11), generator=g)
    ref = maths.token_logprobs_BT(head(h), ids)
    got = maths.logprobs_from_hidden_BT(h, head, ids, chunk=3)
    assert torch.allclose(got, ref, atol=1e-6)
    (gr,) = torch.autograd.grad(ref.sum(), h)
    (gg,) = torch.autograd.grad(got.sum(), h)
    assert torch.allclose(gr, gg, atol=1e-6)


def test_prefix_schedule_values():
    sched = [maths.prefix_length(s, None, 1000, "linear", 1, 256) for s in range(6)]
    assert sched == [1, 257, 513, 769, 1000, 1000]
    assert maths.prefix_length(7, 512, 16384) == 512
    assert maths.prefix_length(0, None, 16384) == 16384
    assert maths.prefix_length(0, 4096, 2048) == 2048


def test_bin_by_position():
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool()
    sums, counts = maths.bin_by_position(v, m, 2)
    assert sums == [33.0, 7.0, 5.0] and counts == [4, 2, 1]
    acc_s, acc_c = [1.0], [1]
    maths.add_bins(acc_s, acc_c, sums, counts)
    assert acc_s == [34.0, 7.0, 5.0] and acc_c == [5, 2, 1]
    assert math.isclose(sums[0] / counts[0], 8.25)
