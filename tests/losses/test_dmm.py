"""Tests of the Dynamic Mixed Margin wrapper (``otcl.losses.DMM`` / ``build("dmm")``)."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import otcl
from otcl.losses import DMM, Mixed, build
from otcl.losses.dmm import min_triplet, mix, vse_hinge


def _hinge_loops(anchors, positives, margin):
    """VSE hinge written with explicit loops (independent reference)."""
    a, b = F.normalize(anchors, dim=-1), F.normalize(positives, dim=-1)
    s = a @ b.T
    n = s.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total = total + torch.relu(margin + s[i, j] - s[i, i])
                total = total + torch.relu(margin + s[i, j] - s[j, j])
    return total / (n * n)


# -- the wrapper equals its base when the DMM weight is 0 ------------------------------------
@pytest.mark.parametrize("base", ["infonce", "hcl", "ot-hard", "gca-uot"])
@pytest.mark.filterwarnings("ignore:dmm. the DMM term is off")  # the point of the test
def test_weight_zero_equals_base_exactly(base, make_pairs):
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5)
    ref = build(base)(z1, z2)
    for kw in ({"weight": 0.0, "epoch": 10}, {"epoch": 0}):  # weight 0, or ramp w(0) = 0
        dmm = DMM(base, **kw)
        mixed = dmm.mix_embeddings(z1)
        assert torch.equal(dmm(z1, z2), ref)
        assert torch.equal(dmm(z1, z2, mixed=mixed), ref)


def test_instance_base_and_build():
    base = build("hcl", beta=2.0)
    dmm = DMM(base, warmup=0.0)
    assert dmm.base is base
    b = build("dmm", base="infonce", base_params={"temperature": 0.1, "layout": "cross"})
    assert isinstance(b, DMM) and b.base.temperature == 0.1 and b.base.layout == "cross"
    assert "dmm" in otcl.losses.available()
    direct = DMM("infonce", temperature=0.2)  # flat base parameters in the constructor
    assert direct.base.temperature == 0.2
    with pytest.raises(ValueError, match="tempreature"):
        build("dmm", base="infonce", base_params={"tempreature": 0.1})


# -- the dynamic margin ---------------------------------------------------------------------
def test_margin_is_lam_times_margin_hand_built():
    # anchors e1, e2; positives e1 and (e1 + e2)/sqrt2: S = [[1, r], [0, r]], r = 1/sqrt2
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    m, lam = 1.0, 0.6
    dmm = DMM("infonce", margin=m, lam_range=(lam, lam), warmup=0.0)
    mixed = Mixed(anchors, lam, torch.tensor([1, 0]))
    term = dmm.dmm_term(mixed, positives)
    r = 1 / math.sqrt(2)
    # active hinges at margin lam*m = 0.6: [0.6 + r - 1]_+ = 0.6 - 0.293 and [0.6 + r - r]_+
    expected = ((lam * m + r - 1) + lam * m) / 4
    assert dmm.margin_for(lam) == lam * m
    torch.testing.assert_close(
        term, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0
    )
    torch.testing.assert_close(term, _hinge_loops(anchors, positives, lam * m))
    # in the full call: total - base = w * term with w = 1 (warmup 0)
    z1, z2 = anchors, positives
    total = dmm(z1, z2, mixed=mixed)
    torch.testing.assert_close(total - dmm.base(z1, z2), term, rtol=1e-6, atol=1e-7)


def test_margin_recomputed_every_step_and_legacy_accumulates(make_pairs):
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5)
    dmm = DMM(margin=0.2, lam_range=(0.5, 1.0), warmup=0.0, seed=0)
    lams = []
    for _ in range(5):
        mixed = dmm.mix_embeddings(z1)
        lams.append(mixed.lam)
        assert 0.5 <= mixed.lam <= 1.0
        assert dmm.margin_for(mixed.lam) == pytest.approx(0.2 * mixed.lam, rel=1e-15)
        assert dmm.margin_for(mixed.lam) == dmm.margin_for(mixed.lam)  # nothing carried over
        torch.testing.assert_close(dmm.dmm_term(mixed, z2), vse_hinge(mixed.z, z2, 0.2 * mixed.lam))
    legacy = DMM(
        margin=0.2, lam_range=(0.5, 1.0), warmup=0.0, seed=0, legacy_cumulative_margin=True
    )
    prod = 0.2
    for lam in lams:  # same seed -> same lambdas; the official margin *= lam
        mixed = legacy.mix_embeddings(z1)
        assert mixed.lam == lam
        prod *= lam
        torch.testing.assert_close(legacy.dmm_term(mixed, z2), vse_hinge(mixed.z, z2, prod))


def test_ramp_weight(make_pairs):
    dmm = DMM(warmup=30)
    assert dmm.current_weight == 0.0
    dmm.set_epoch(30)
    assert dmm.current_weight == 0.5
    dmm.set_epoch(90)
    assert dmm.current_weight == pytest.approx(0.75)
    assert DMM(warmup=0).current_weight == 1.0
    assert DMM(warmup=12, weight=2.0, epoch=12).current_weight == 1.0
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5)
    dmm = DMM(warmup=30, epoch=30, lam_range=(0.7, 0.7))
    mixed = dmm.mix_embeddings(z1)
    total = dmm(z1, z2, mixed=mixed)
    term = dmm.dmm_term(mixed, z2)
    torch.testing.assert_close(total, dmm.base(z1, z2) + 0.5 * term)


# -- mixing -------------------------------------------------------------------------------
def test_embedding_mixing_reverse_and_random(make_pairs):
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5, n=6)
    dmm = DMM(lam_range=(0.3, 0.3))
    mixed = dmm.mix_embeddings(z1)
    assert mixed.lam == pytest.approx(0.3)
    assert torch.equal(mixed.perm, torch.arange(5, -1, -1))
    torch.testing.assert_close(mixed.z, 0.3 * z1 + 0.7 * z1.flip(0))
    rnd = DMM(partner="random", seed=3)
    m1 = rnd.mix_embeddings(z1)
    assert sorted(m1.perm.tolist()) == list(range(6))
    torch.testing.assert_close(m1.z, m1.lam * z1 + (1 - m1.lam) * z1[m1.perm])
    m2 = DMM(partner="random", seed=3).mix_embeddings(z1)
    assert m2.lam == m1.lam and torch.equal(m2.perm, m1.perm)  # seeded


def test_mix_with_one_draw_for_several_tensors_and_total(make_pairs):
    """sample + mix_with + dmm_term + total is the forward's DMM term, piece by piece."""
    z1, z2 = make_pairs(dtype=torch.float64, noise=0.5, n=6)
    dmm = DMM(partner="random", seed=5, warmup=0.0)
    lam, perm = dmm.sample(6)
    za, zb = dmm.mix_with(z1, lam, perm), dmm.mix_with({"m": z2, "n": None}, lam, perm)
    torch.testing.assert_close(za, lam * z1 + (1 - lam) * z1[perm], rtol=0, atol=0)
    torch.testing.assert_close(zb["m"], lam * z2 + (1 - lam) * z2[perm], rtol=0, atol=0)
    assert zb["n"] is None
    term = dmm.total(dmm.dmm_term(Mixed(za, lam, perm), z2))
    ref = DMM(partner="random", seed=5, warmup=0.0)
    expected = ref(z1, z2) - ref.base_loss(z1, z2)
    torch.testing.assert_close(dmm.current_weight * term, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="ids cannot be mixed"):
        dmm.mix_with(torch.arange(6), lam, perm, embeddings=False)


def test_mix_structures_and_missing_modality():
    perm = torch.tensor([2, 1, 0])
    x = {"text": torch.ones(3, 4) * torch.arange(3.0)[:, None], "audio": None}
    out = mix(x, 0.25, perm)
    assert out["audio"] is None
    torch.testing.assert_close(out["text"][:, 0], torch.tensor([1.5, 1.0, 0.5]))
    tup = mix((torch.arange(3.0), torch.zeros(3)), 0.5, perm)
    assert isinstance(tup, tuple) and torch.equal(tup[0], torch.full((3,), 1.0))
    with pytest.raises(ValueError, match="x"):
        mix(torch.arange(3), 0.5, perm)  # ids cannot be mixed


class _ModalEncoder(nn.Module):
    """Toy multimodal encoder: mean of the available modalities' latents (GMC-style)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.ModuleDict({"t": nn.Linear(4, 3), "a": nn.Linear(2, 3)})

    def forward(self, x):
        zs = [self.enc[k](v) for k, v in x.items() if v is not None]
        return torch.stack(zs).mean(0)


def test_input_space_gradients_reach_encoder():
    torch.manual_seed(0)
    enc = nn.Linear(6, 4).double()
    x1 = torch.randn(8, 6, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(8, 6, dtype=torch.float64)
    dmm = DMM(warmup=0.0, lam_range=(0.6, 0.6))
    z1, z2 = enc(x1), enc(x2)
    mixed = dmm.mix_inputs(enc, x1)
    term = dmm.dmm_term(mixed, z2)
    g = torch.autograd.grad(term, enc.weight)[0]
    assert g.abs().sum() > 0
    # reference: re-encode the mixed inputs by hand, loop hinge at margin 0.6 * 0.2
    ref = _hinge_loops(enc(0.6 * x1 + 0.4 * x1.flip(0)), enc(x2), 0.12)
    torch.testing.assert_close(term, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, torch.autograd.grad(ref, enc.weight)[0], rtol=1e-10, atol=1e-14)

    # and the derivative is right (finite differences) through mixing + encoder
    def f(w, b):
        e = lambda x: x @ w.T + b  # noqa: E731
        m = DMM(warmup=0.0, lam_range=(0.6, 0.6)).mix_inputs(e, x1)
        return DMM(warmup=0.0).dmm_term(Mixed(m.z, 0.6, m.perm), e(x2))

    w = enc.weight.detach().clone().requires_grad_(True)
    b = enc.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (w, b), eps=1e-6, atol=1e-6)
    # full call: the total's gradient includes the mixed branch
    z1, z2 = enc(x1), enc(x2)
    total = dmm(z1, z2, mixed=dmm.mix_inputs(enc, x1))
    g_total = torch.autograd.grad(total, enc.weight)[0]
    z1b, z2b = enc(x1), enc(x2)
    g_base = torch.autograd.grad(dmm.base(z1b, z2b), enc.weight)[0]
    assert (g_total - g_base).abs().max() > 1e-6


def test_lam_one_input_mixing_is_the_clean_hinge_at_full_margin():
    """lam = 1: the mixed anchors are the clean ones, the margin is the base margin m."""
    torch.manual_seed(2)
    enc = nn.Linear(6, 4).double()
    x1 = torch.randn(8, 6, dtype=torch.float64)
    z2 = enc(x1 + 0.3 * torch.randn(8, 6, dtype=torch.float64))
    dmm = DMM(margin=0.3, lam_range=(1.0, 1.0), warmup=0.0)
    term = dmm.dmm_term(dmm.mix_inputs(enc, x1), z2)
    assert dmm.margin_for(1.0) == 0.3
    torch.testing.assert_close(term, _hinge_loops(enc(x1), z2, 0.3), rtol=1e-12, atol=1e-14)


def test_per_modality_mixing():
    torch.manual_seed(1)
    enc = _ModalEncoder()
    x = {"t": torch.randn(6, 4), "a": torch.randn(6, 2)}
    joint = enc(x).detach()
    dmm = DMM(warmup=0.0, lam_range=(0.7, 0.7))
    mixed = dmm.mix_inputs(enc, x, per_modality=True)
    assert isinstance(mixed.z, list) and len(mixed.z) == 2
    xm_t = 0.7 * x["t"] + 0.3 * x["t"].flip(0)
    torch.testing.assert_close(mixed.z[0], enc({"t": xm_t, "a": None}))
    term = dmm.dmm_term(mixed, joint)
    ref = 0.5 * (vse_hinge(mixed.z[0], joint, 0.14) + vse_hinge(mixed.z[1], joint, 0.14))
    torch.testing.assert_close(term, ref)
    # a missing modality is skipped, not mixed
    only_t = dmm.mix_inputs(enc, {"t": x["t"], "a": None}, per_modality=True)
    assert len(only_t.z) == 1
    term.backward()
    assert enc.enc["a"].weight.grad.abs().sum() > 0


def test_both_views(make_pairs):
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5)
    dmm = DMM(warmup=0.0, both_views=True, lam_range=(0.8, 0.8))
    mixed = dmm.mix_embeddings(z1, z2)
    term = dmm.dmm_term(mixed, z2, z1)
    ref = 0.5 * (
        vse_hinge(0.8 * z1 + 0.2 * z1.flip(0), z2, 0.16)
        + vse_hinge(0.8 * z2 + 0.2 * z2.flip(0), z1, 0.16)
    )
    torch.testing.assert_close(term, ref)
    with pytest.raises(ValueError, match="x2"):
        dmm.mix_inputs(nn.Identity(), z1)


def test_triplet_pair_loss():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.5, 0.0], [1.0, 1.0], [0.0, 0.0]])
    # d(a0,b0)=0.5, hardest other: d(a0,b2)=0 -> [m + 0.5 - 0];
    # d(a1,b1)=1, min(d(a1,b0)=.5, d(a1,b2)=1)
    # d(a2,b2)=2, min(d(a2,b0)=sqrt(4.25), d(a2,b1)=sqrt2)
    m = 0.3
    expected = ((m + 0.5) + (m + 1 - 0.5) + max(0.0, m + 2 - math.sqrt(2))) / 3
    torch.testing.assert_close(min_triplet(a, b, m), torch.tensor(expected))
    dmm = DMM(pair_loss="triplet", margin=0.5, lam_range=(0.6, 0.6), warmup=0.0)
    torch.testing.assert_close(
        dmm.dmm_term(Mixed(a, 0.6, torch.arange(3)), b), min_triplet(a, b, 0.3)
    )


def test_repel_close_positives_option():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[1.0, 0.05], [1.0, 1.0]])
    lam, m = 0.5, 0.2
    mixed = Mixed(anchors, lam, torch.tensor([1, 0]))
    off = DMM(margin=m, warmup=0.0).dmm_term(mixed, positives)
    on = DMM(margin=m, warmup=0.0, repel_close_positives=True, repel_weight=2.0).dmm_term(
        mixed, positives
    )
    cap = 1 - (1 - lam) * m  # 0.9
    cos0 = 1 / math.sqrt(1 + 0.05**2)  # > cap: repelled; cos1 = 1/sqrt2 < cap
    torch.testing.assert_close(on - off, torch.tensor(2.0 * (cos0 - cap) / 2))
    assert torch.equal(off, vse_hinge(anchors, positives, lam * m))


def test_wraps_cross_and_hard_negative_bases(make_pairs):
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5)
    z1.requires_grad_(True)
    for base in ("infonce", "ot-hard", "dcl"):
        dmm = build("dmm", base=base, base_params={"layout": "cross"}, warmup=0.0)
        val = dmm(z1, z2, labels=None)
        val.backward()
        assert torch.isfinite(val) and torch.isfinite(z1.grad).all()
        z1.grad = None


@pytest.mark.parametrize(
    "base,kw",
    [(b, {}) for b in ("infonce", "dcl", "hcl", "ot-hard", "gca-uot")]
    + [("infonce", {"pair_loss": "triplet"}), ("hcl", {"repel_close_positives": True})]
    + [("gca-uot", {"both_views": True})],
)
def test_gradcheck_full_loss(base, kw):
    """base + DMM term, embedding-space mixing, with this batch's (lam, perm) held fixed."""
    g = torch.Generator().manual_seed(21)
    z1 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    extra = {"coupling_grad": "unrolled", "tol": None, "iters": 30} if base == "ot-hard" else {}
    dmm = DMM(base, warmup=0.0, partner="random", seed=1, **kw, **extra)
    lam, perm = dmm.sample(4)
    dmm.sample = lambda n, device=None: (lam, perm)
    inputs = (z1.clone().requires_grad_(True), z2.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda a, b: dmm(a, b), inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kw,arg",
    [
        ({"margin": -0.1}, "margin"),
        ({"lam_range": (0.8, 0.2)}, "lam_range"),
        ({"lam_range": (0.5, 1.5)}, "lam_range"),
        ({"lam_range": 0.5}, "lam_range"),
        ({"warmup": -1}, "warmup"),
        ({"weight": -1}, "weight"),
        ({"partner": "shift"}, "partner"),
        ({"pair_loss": "ce"}, "pair_loss"),
        ({"epoch": -1}, "epoch"),
        ({"base": 3}, "base"),
        ({"base": "nope"}, "name"),
        ({"base": nn.Identity(), "base_params": {"temperature": 0.1}}, "base_params"),
    ],
)
def test_bad_parameters(kw, arg):
    with pytest.raises(ValueError, match=arg):
        DMM(**kw)


def test_bad_call_inputs(make_pairs):
    dmm = DMM(warmup=0.0)
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5)
    with pytest.raises(ValueError, match="z1"):
        dmm(z1, z2[:4])
    with pytest.raises(ValueError, match="x1"):
        dmm.mix_inputs(nn.Identity(), torch.arange(8))
    with pytest.raises(ValueError, match="x1"):
        dmm.mix_inputs(nn.Identity(), torch.randn(8, 3), per_modality=True)
    with pytest.raises(ValueError, match="batch_size"):
        dmm.sample(1)


def test_build_dmm_forwards_flat_base_parameters():
    flat = otcl.losses.build("dmm", base="infonce", temperature=0.1, margin=0.3)
    assert flat.base.temperature == 0.1
    with pytest.raises(ValueError, match="tempreature"):
        otcl.losses.build("dmm", base="infonce", tempreature=0.1)


# -- checkpointing -------------------------------------------------------------------------
def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only: the extra state is plain data and tensors


@pytest.mark.parametrize("partner", ["random", "reverse"])
def test_state_dict_restores_generator_legacy_margin_and_epoch(partner, make_pairs):
    """A resumed DMM (new instance, different seed) draws the same next (lam, perm), carries the
    legacy cumulative margin on, and is at the same epoch of the ramp."""
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5)
    kw = {"partner": partner, "legacy_cumulative_margin": True, "warmup": 30.0}
    run = DMM(seed=5, epoch=2, **kw)
    for _ in range(3):
        run(z1, z2)
    run.set_epoch(7)
    state = _roundtrip(run.state_dict())
    resumed = DMM(seed=123, **kw)
    resumed.load_state_dict(state)
    assert resumed.epoch == 7 and resumed.current_weight == run.current_weight
    assert resumed._legacy_margin == run._legacy_margin
    for _ in range(3):
        a, b = run.mix_embeddings(z1), resumed.mix_embeddings(z1)
        assert a.lam == b.lam and torch.equal(a.perm, b.perm)
        assert torch.equal(run(z1, z2), resumed(z1, z2))
        assert run._legacy_margin == resumed._legacy_margin  # legacy product continued
    assert 0.2 * 0.5**6 <= run._legacy_margin < 0.2 * 0.5  # six margins of lam in [0.5, 1)


def test_state_dict_global_rng_and_wrapped_base_state(make_pairs):
    """Without a seed DMM uses torch's global RNG (checkpointed by the trainer): loading that
    state drops a private generator. The wrapped base's own extra state travels along."""
    z1, z2 = make_pairs(dtype=torch.float32, noise=0.5)
    unseeded = DMM("hcl", warmup=0.0, partner="random")
    unseeded.base.beta = 0.25  # e.g. HCL's beta annealing
    state = _roundtrip(unseeded.state_dict())
    assert set(state) == {"_extra_state", "base._extra_state"}
    seeded = DMM("hcl", warmup=0.0, partner="random", seed=0)
    seeded.load_state_dict(state)
    assert seeded._gen is None and seeded.base.beta == 0.25
    torch.manual_seed(11)
    a = unseeded.mix_embeddings(z1)
    torch.manual_seed(11)
    b = seeded.mix_embeddings(z1)
    assert a.lam == b.lam and torch.equal(a.perm, b.perm)
    with pytest.raises(ValueError, match="state"):
        seeded.set_extra_state({"epoch": 1})


# -- a plain loop: the term works, or the loss says why not --------------------------------------
def _plain_loop(dmm, base, steps, hooks):
    """A training loop as a user writes it; ``hooks``: call set_epoch / prepare_inputs."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(12, 6)
    x1, x2 = torch.randn(16, 12), torch.randn(16, 12)
    diffs = []
    for step in range(steps):
        extra = {}
        if hooks:
            if step % 10 == 0:
                dmm.set_epoch(step // 10)
            extra = dmm.prepare_inputs(encoder, x1)
        z1, z2 = encoder(x1), encoder(x2)
        diffs.append(float((dmm(z1, z2, **extra) - base(z1, z2)).abs().detach()))
    return diffs


def test_plain_loop_without_hooks_warns_that_the_term_is_off():
    """200 calls without set_epoch: the term is off (the documented ramp at epoch 0), and the
    loss says so and how to switch it on, instead of silently returning the base loss."""
    dmm, base = build("dmm", base="gca-uot"), build("gca-uot")
    with pytest.warns(UserWarning, match=r"DMM term is off.*set_epoch\(epoch\).*warmup=0") as rec:
        diffs = _plain_loop(dmm, base, 200, hooks=False)
    assert max(diffs) == 0.0 and len(rec) >= 1
    # a constant weight needs no schedule: the term is on from the first call, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diffs = _plain_loop(build("dmm", base="gca-uot", warmup=0), base, 5, hooks=False)
    assert min(diffs) > 0


def test_plain_loop_with_the_readme_hooks_gets_the_term_without_warning():
    dmm, base = build("dmm", base="gca-uot"), build("gca-uot")
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # set_epoch(0) is a schedule: weight 0 at epoch 0, no warning
        diffs = _plain_loop(dmm, base, 40, hooks=True)
    assert max(diffs[:10]) == 0.0  # epoch 0: w(0) = 0
    assert min(diffs[10:]) > 0  # from epoch 1 on, the DMM term is added


def test_no_warning_in_eval_mode_after_a_checkpoint_or_with_weight_zero(make_pairs):
    z1, z2 = make_pairs(n=8, d=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("dmm").eval()(z1, z2)
        build("dmm", weight=0.0)(z1, z2)
        restored = build("dmm")
        restored.load_state_dict(build("dmm").state_dict())  # a resumed run: epoch restored
        restored(z1, z2)
