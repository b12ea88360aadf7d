"""Towers, models, CML's loss and the training objective, against direct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from otcl.pipelines.recsys.baselines import Popularity, fit_implicit, implicit_available
from otcl.pipelines.recsys.data import NegativeSampler, split
from otcl.pipelines.recsys.models import (
    CMLTripletLoss,
    Tower,
    bpr_loss,
    build_model,
    feature_tables,
)
from otcl.pipelines.recsys.objective import Objective, ObjectiveSpec
from otcl.pipelines.sources.movielens import load_ratings

FEATURES = ("age", "gender", "occupation", "genres", "year", "title")


@pytest.fixture
def data(ml_dir):
    return load_ratings("ml-100k", ml_dir)


def test_cml_triplet_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    u, p, n = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, 3, 4)
    got = CMLTripletLoss(margin=0.7)(u, p, negatives=n)
    ref = 0.0
    for i in range(6):
        d_neg = min(float(torch.dist(u[i], n[i, k])) for k in range(3))
        ref += max(0.0, 0.7 + float(torch.dist(u[i], p[i])) - d_neg)
    assert float(got) == pytest.approx(ref / 6, rel=1e-6)
    with pytest.raises(ValueError, match="negatives: CMLTripletLoss needs"):
        CMLTripletLoss()(u, p)
    with pytest.raises(ValueError, match="negatives: expected shape"):
        CMLTripletLoss()(u, p, negatives=n[:2])
    with pytest.raises(ValueError, match="margin: expected a number >= 0"):
        CMLTripletLoss(-1.0)


def test_cml_score_ranks_by_euclidean_distance(data):
    model = build_model("cml", data, dim=8)
    score = model.scorer()(torch.arange(5))
    u = model.users(torch.arange(5))
    v = model.all_items()
    ref = -torch.cdist(u, v)
    assert torch.equal(score.argsort(dim=1), ref.argsort(dim=1))
    # the ID embeddings live in the unit ball after a lookup, as nn.Embedding(max_norm=1)
    assert float(v.detach().norm(dim=1).max()) <= 1.0 + 1e-6


def test_renorm_matches_torch_max_norm():
    torch.manual_seed(0)
    t = Tower(10, 4, max_norm=1.0, init_std=None)
    ref = nn.Embedding(10, 4, max_norm=1.0)
    ref.weight.data.copy_(t.id.weight.data)
    idx = torch.tensor([1, 3, 3, 7])
    torch.testing.assert_close(t(idx), ref(idx))
    torch.testing.assert_close(t.id.weight, ref.weight)


def test_tower_drop_equals_a_tower_without_that_feature(data):
    _, items = feature_tables(data, ("genres", "title"))
    torch.manual_seed(0)
    full = Tower(data.n_items, 8, items)
    only_genres = Tower(data.n_items, 8, {"genres": items["genres"]})
    only_genres.load_state_dict({k: v for k, v in full.state_dict().items() if "title" not in k})
    idx = torch.arange(data.n_items)
    torch.testing.assert_close(full(idx, drop={"title"}), only_genres(idx))
    assert not torch.allclose(full(idx), only_genres(idx))
    with pytest.raises(ValueError, match="drop: unknown feature"):
        full(idx, drop={"age"})


def test_two_tower_outputs_unit_vectors_and_cosine_scores(data):
    model = build_model("two-tower", data, dim=8, features=FEATURES)
    u, v = model.users(torch.arange(4)), model.all_items()
    torch.testing.assert_close(u.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(model.scorer()(torch.arange(4)), u @ v.T)


def test_cold_items_are_scored_from_features_only(data):
    model = build_model("two-tower", data, dim=8, features=("genres",))
    cold = torch.zeros(data.n_items, dtype=torch.bool)
    cold[:5] = True
    s = model.scorer(item_drop_mask=cold)(torch.arange(3))
    ref = model.users(torch.arange(3)) @ model.items(torch.arange(5), drop={"id"}).T
    torch.testing.assert_close(s[:, :5], ref)


def test_model_errors(data, tmp_path):
    with pytest.raises(ValueError, match="model: expected one of cml, two-tower, mf"):
        build_model("gru", data)
    with pytest.raises(ValueError, match="features: unknown colour"):
        build_model("cml", data, features=("colour",))
    with pytest.raises(ValueError, match="features: the mf baseline uses ids only"):
        build_model("mf", data, features=("genres",))
    with pytest.raises(ValueError, match="id_dropout: applies only to towers with side"):
        build_model("two-tower", data, id_dropout=0.2)
    p = tmp_path / "r.csv"
    p.write_text("a,x,5\nb,y,4\n")
    with pytest.raises(ValueError, match="features: r has no item features"):
        build_model("two-tower", load_ratings("csv", p), features=("title",))


def test_bpr():
    pos, neg = torch.tensor([1.0, 0.0]), torch.tensor([[0.0], [2.0]])
    ref = (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(2.0))) / 2
    assert float(bpr_loss(pos, neg)) == pytest.approx(ref)


@pytest.mark.parametrize(
    "kind, spec",
    [
        ("cml", ObjectiveSpec()),
        ("mf", ObjectiveSpec(loss="bpr", negatives=1)),
        ("two-tower", ObjectiveSpec(loss="infonce", negatives=0)),
        ("two-tower", ObjectiveSpec(loss="gca-uot", loss_params={"temperature": 0.2}, negatives=0)),
    ],
)
def test_objective_trains_every_kind(data, kind, spec):
    s = split(data)
    feats = FEATURES if kind == "two-tower" else ()
    model = build_model(kind, data, dim=8, features=feats)
    obj = Objective(model, spec, NegativeSampler(s.train_user, s.train_item, data.n_items))
    u, i = torch.from_numpy(s.train_user[:32]), torch.from_numpy(s.train_item[:32])
    loss = obj(model, u, i, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.user.id.weight.grad.abs().sum() > 0


def test_objective_rejects_mismatched_losses(data):
    s = split(data)
    ns = NegativeSampler(s.train_user, s.train_item, data.n_items)
    with pytest.raises(ValueError, match="loss: the cml model trains with its min-triplet"):
        Objective(build_model("cml", data, dim=4), ObjectiveSpec(loss="infonce"), ns)
    with pytest.raises(ValueError, match="loss: the two-tower model trains with an otcl loss"):
        Objective(build_model("two-tower", data, dim=4), ObjectiveSpec(), ns)
    with pytest.raises(ValueError, match="loss: the mf model trains with BPR only"):
        Objective(build_model("mf", data, dim=4), ObjectiveSpec(loss="bpr", dmm=True), ns)


def test_popularity_scores_are_training_counts(data):
    s = split(data)
    scores = Popularity(s).scorer()(torch.arange(3))
    counts = np.bincount(s.train_item, minlength=data.n_items)
    np.testing.assert_array_equal(scores[0].numpy(), counts)
    assert torch.equal(scores[0], scores[2])


def test_implicit_baselines(data, monkeypatch):
    s = split(data)
    if implicit_available():
        score = fit_implicit("als", s, factors=4, iterations=2, threads=1)
        assert score(torch.arange(3)).shape == (3, data.n_items)
    monkeypatch.setattr("otcl.pipelines.recsys.baselines.implicit_available", lambda: False)
    with pytest.raises(ValueError, match="implicit: the optional package is not installed"):
        fit_implicit("bpr", s)
    with pytest.raises(ValueError, match="implicit: expected one of als, bpr"):
        fit_implicit("svd", s)


def test_dmm_wraps_cml_with_each_users_own_negatives():
    from otcl.losses import build
    from otcl.losses.pair_losses import min_triplet

    g = torch.Generator().manual_seed(1)
    u, p, n = (torch.randn(*s, generator=g) for s in ((6, 4), (6, 4), (6, 3, 4)))
    base = CMLTripletLoss(margin=1.5)
    lam = 0.3
    dmm = build("dmm", base=base, pair_loss="triplet", margin=1.5, lam_range=(lam, lam), warmup=0)
    mixed = lam * u + (1 - lam) * u.flip(0)
    ref = base(u, p, negatives=n) + min_triplet(mixed, p, lam * 1.5, n)
    torch.testing.assert_close(dmm(u, p, negatives=n), ref)
    # DMM hands the base the per-anchor sets as given; a flattened set is refused
    with pytest.raises(ValueError, match=r"negatives: expected shape \(6, K, 4\)"):
        base(u, p, negatives=n.reshape(18, 4))


@pytest.mark.parametrize("kind, loss", [("cml", "triplet"), ("two-tower", "infonce")])
def test_objective_with_dmm_and_sampled_negatives(data, kind, loss):
    s = split(data)
    model = build_model(kind, data, dim=8)
    neg = 10 if kind == "cml" else 5
    spec = ObjectiveSpec(loss=loss, dmm=True, dmm_params={"warmup": 0.0}, negatives=neg)
    obj = Objective(model, spec, NegativeSampler(s.train_user, s.train_item, data.n_items))
    u, i = torch.from_numpy(s.train_user[:16]), torch.from_numpy(s.train_item[:16])
    obj.set_epoch(3)
    with_dmm = obj(model, u, i, torch.Generator().manual_seed(0))
    obj.loss.weight = 0.0
    without = obj(model, u, i, torch.Generator().manual_seed(0))
    assert torch.isfinite(with_dmm) and with_dmm.item() > without.item()


@pytest.mark.parametrize("negatives", [0, 3])
def test_pop_marginal_gives_the_loss_the_batch_items_sampling_probability(data, negatives):
    from otcl.losses import build

    s = split(data)
    model = build_model("two-tower", data, dim=8, features=FEATURES)
    counts = torch.bincount(torch.from_numpy(s.train_item), minlength=data.n_items)
    spec = ObjectiveSpec(loss="infonce", loss_params={"temperature": 0.3}, negatives=negatives)
    ns = NegativeSampler(s.train_user, s.train_item, data.n_items)
    marg = Objective(model, ObjectiveSpec(**{**spec.__dict__, "pop_marginal": 0.5}), ns, counts)
    u, i = torch.from_numpy(s.train_user[:32]), torch.from_numpy(s.train_item[:32])
    model.eval()  # no ID dropout: the same embeddings in both calls
    got = marg(model, u, i, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    loss = build("infonce", temperature=0.3, layout="cross")
    q = (counts.double() / counts.sum())[i] ** 0.5
    zu = model.users(u)
    if negatives:
        extra = ns.pool[torch.randint(len(ns.pool), (negatives,), generator=gen)]
        zi = model.items(torch.cat([i, extra]))
        q = torch.cat([q, torch.full((negatives,), (1 / len(ns.pool)) ** 0.5, dtype=q.dtype)])
        ref = loss(zu, zi[:32], negatives=zi[32:], col_prior=q)
    else:
        ref = loss(zu, model.items(i), col_prior=q)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    plain = Objective(model, spec, ns)(model, u, i, torch.Generator().manual_seed(0))
    assert plain.item() != pytest.approx(got.item(), rel=1e-3)


def test_pop_marginal_needs_a_column_marginal(data):
    s = split(data)
    ns = NegativeSampler(s.train_user, s.train_item, data.n_items)
    counts = torch.ones(data.n_items)
    model = build_model("two-tower", data, dim=4)
    for loss in ("hcl", "dcl"):
        with pytest.raises(ValueError, match=f"model.pop_marginal: the loss {loss} has no column"):
            Objective(model, ObjectiveSpec(loss=loss, negatives=0, pop_marginal=1.0), ns, counts)
    spec = ObjectiveSpec(loss="iot", loss_params={"relax": "both"}, negatives=0, pop_marginal=1.0)
    with pytest.raises(ValueError, match=r"has no column marginal \(constraint='mass'\)"):
        Objective(model, spec, ns, counts)
