"""Every loss on the streaming geometry equals its dense path: value and every gradient.

float64 to 1e-10 and float32 to 1e-5; both layouts; identity, label and domain-block targets;
extra negatives; balanced, unbalanced and semi-relaxed couplings; the unrolled, implicit and
detached backwards in both arithmetic domains; tile sizes 1, 7, 64 and n with a batch the tile
does not divide. Then the option itself: ``build``, refusals, ``"auto"``, DMM and the CLI.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import otcl
from otcl.losses import build

N, D, K = 13, 5, 3  # 2N = 26 rows: tiles of 7 leave a remainder
OT_LOSSES = ["ot", "infonce", "iot", "iot-uni", "gca-ince", "gca-rince", "gca-uot", "rince"]
TILES = [1, 7, 64, None]  # None: one tile of all n rows
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _batch(dtype=torch.float64, seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, D, generator=g, dtype=dtype)
    z2 = z1 + 0.8 * torch.randn(n, D, generator=g, dtype=dtype)
    neg = torch.randn(K, D, generator=g, dtype=dtype)
    labels = torch.randint(0, 3, (n,), generator=g)
    return z1, z2, neg, labels


def _target(layout, n_extra, dtype):
    t = otcl.losses.domain_target(torch.arange(N) % 3, 0.3, 0.1, layout).to(dtype)
    return torch.cat([t, t.new_zeros(t.shape[0], n_extra)], 1) if n_extra else t


def _run(name, params, kind, with_neg, dtype, **stream):
    z1, z2, neg, labels = _batch(dtype)
    ins = [z1.requires_grad_(), z2.requires_grad_()] + ([neg.requires_grad_()] if with_neg else [])
    kw = {"negatives": neg if with_neg else None}
    if kind == "labels":
        kw["labels"] = labels
    elif kind == "target":
        kw["target"] = _target(params.get("layout", "simclr"), K if with_neg else 0, dtype)
    value = build(name, **params, **stream)(z1, z2, **kw)
    return value.detach(), torch.autograd.grad(value, ins)


def _check(name, params, kind="identity", with_neg=False, tile=7, dtype=torch.float64):
    n_rows = 2 * N if params.get("layout", "simclr") == "simclr" else N
    tile = n_rows if tile is None else tile
    ref, ref_grads = _run(name, params, kind, with_neg, dtype)
    got, grads = _run(name, params, kind, with_neg, dtype, geometry="streaming", tile_size=tile)
    tol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    assert len(grads) == len(ref_grads)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert r.abs().max() > 0, "a gradient that cannot differ"
        torch.testing.assert_close(g, r, rtol=tol, atol=tol, msg=f"grad {i}")


def _matrix():
    """Every loss x layout x target kind (+ extra negatives), tile sizes in rotation."""
    out = []
    for i, (name, layout, kind) in enumerate(
        itertools.product(
            OT_LOSSES + ["ot-hard"],
            ["simclr", "cross"],
            ["identity", "labels", "target", "negatives"],
        )
    ):
        if kind == "target" and name == "ot-hard":
            continue  # ot-hard takes no custom target (dense refuses it too)
        params = {"layout": layout} | ({"tol": 0.0, "iters": 20} if name == "ot-hard" else {})
        with_neg = kind == "negatives"
        kind = "identity" if with_neg else kind
        out.append(
            pytest.param(
                name,
                params,
                kind,
                with_neg,
                TILES[i % 4],
                id=f"{name}-{layout}-{kind}{'-neg' if with_neg else ''}-t{TILES[i % 4]}",
            )
        )
    return out


@pytest.mark.parametrize("name,params,kind,with_neg,tile", _matrix())
def test_streaming_equals_dense(name, params, kind, with_neg, tile):
    _check(name, params, kind, with_neg, tile)


SOLVERS = [
    ("gca-ince", {"grad": "implicit", "iters": 60}),
    ("gca-uot", {"grad": "implicit", "iters": 60}),
    ("gca-rince", {"grad": "implicit", "iters": 60}),
    ("gca-ince", {"domain": "log"}),
    ("gca-uot", {"domain": "log"}),
    ("gca-uot", {"domain": "log", "grad": "implicit", "iters": 60}),
    ("gca-rince", {"grad": "detach"}),
    ("iot-uni", {"domain": "log"}),
    ("iot-uni", {"detach_mean": True}),
    ("iot", {"relax": "both"}),
    ("ot", {"constraint": "cols", "divergence": "rince"}),
    ("ot", {"constraint": "unbalanced", "rho": 0.5, "marginals": "unit"}),
    ("gca-ince", {"tol": 1e-6, "iters": 200}),
    ("gca-uot", {"temperature": 0.02}),  # |S| up to 50: the log domain under "auto"
    ("gca-uot", {"similarity": "dot", "clip_min": -0.5}),
    ("ot-hard", {"coupling_grad": "unrolled", "tol": 0.0, "iters": 20}),
    ("ot-hard", {"coupling_grad": "implicit", "tol": 1e-12, "iters": 300}),
    ("ot-hard", {"coupling_grad": "detach", "tol": 0.0, "iters": 20, "cost": "exp"}),
    ("ot-hard", {"similarity": "dot", "tol": 0.0, "iters": 20}),
]


@pytest.mark.parametrize("layout", ["simclr", "cross"])
@pytest.mark.parametrize(
    "name,params", SOLVERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SOLVERS)]
)
def test_streaming_backwards_equal_dense(name, params, layout):
    _check(name, {**params, "layout": layout}, "labels" if "rince" in name else "identity", True)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize(
    "name,params",
    [("gca-uot", {}), ("iot-uni", {}), ("gca-ince", {"grad": "implicit", "iters": 60})],
)
def test_every_tile_size(name, params, tile):
    _check(name, params, "target", True, tile)


@pytest.mark.parametrize("name", OT_LOSSES + ["ot-hard"])
def test_float32(name):
    params = {"tol": 0.0, "iters": 20} if name == "ot-hard" else {}
    _check(name, params, "labels", True, 7, torch.float32)
    _check(
        name, {**params, "layout": "cross", "symmetric": True}, "identity", False, 64, torch.float32
    )


def test_float32_implicit():
    _check("gca-uot", {"grad": "implicit", "iters": 60}, "identity", True, 7, torch.float32)


# -- the option ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params,names",
    [
        ({"geometry": "streaming", "tile_size": 0}, "tile_size"),
        ({"geometry": "streaming", "tile_size": 2.5}, "tile_size"),
        ({"tile_size": 8}, "tile_size"),
        ({"memory_budget": 1e9}, "memory_budget"),
        ({"geometry": "streaming", "memory_budget": 0}, "memory_budget"),
        ({"geometry": "tiled"}, "geometry"),
        ({"geometry": "streaming", "self_pair": "max_cost"}, "self_pair"),
        ({"geometry": "auto", "self_pair": "max_cost"}, "self_pair"),
        ({"geometry": "streaming", "constraint": "balanced", "backward": "autograd"}, "backward"),
    ],
)
def test_bad_options_name_the_option(params, names):
    with pytest.raises(ValueError, match=f"^{names}:"):
        build("ot", **params)


def test_ot_hard_dot_with_coupling_gradient_is_refused():
    with pytest.raises(ValueError, match="^coupling_grad:.*similarity='dot'"):
        build("ot-hard", geometry="streaming", similarity="dot", coupling_grad="unrolled")


def test_budget_that_one_tile_exceeds():
    z1, z2, _, _ = _batch()
    m = 2 * N
    with pytest.raises(ValueError, match="^memory_budget: a tile of tile_size=7 rows"):
        build("gca-uot", geometry="streaming", tile_size=7, memory_budget=4 * 7 * m * 8 - 1)(z1, z2)
    with pytest.raises(ValueError, match="^memory_budget: one tile row"):
        build("gca-uot", geometry="streaming", memory_budget=4 * m * 8 - 1)(z1, z2)
    # exactly one row fits: one-row tiles, the same value
    one_row = build("gca-uot", geometry="streaming", memory_budget=4 * m * 8)
    torch.testing.assert_close(one_row(z1, z2), build("gca-uot")(z1, z2), rtol=1e-10, atol=1e-10)


def test_subclass_with_its_own_terms_is_refused():
    class Custom(otcl.losses.GCAUOT):
        def extra_terms(self, out, target, pos, rows, geom):
            return None

    with pytest.raises(ValueError, match="^geometry: Custom cannot stream"):
        Custom(geometry="streaming")
    Custom()  # dense: fine


def test_auto_streams_only_over_the_budget(monkeypatch):
    import otcl.losses.streaming as streaming

    calls = []
    real = streaming.streaming_pair_scores
    monkeypatch.setattr(
        otcl.losses.base,
        "streaming_forward",
        lambda *a, **k: calls.append(k["tile_size"]) or streaming.streaming_forward(*a, **k),
    )
    z1, z2, _, _ = _batch()
    ref = build("gca-uot")(z1, z2)
    dense_size = 6 * (2 * N) ** 2 * 8
    torch.testing.assert_close(
        build("gca-uot", geometry="auto", memory_budget=dense_size)(z1, z2), ref, rtol=0, atol=0
    )
    assert calls == []
    got = build("gca-uot", geometry="auto", memory_budget=dense_size - 1)(z1, z2)
    assert calls == [2 * N]  # the budget fits every row in one tile
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    assert real is streaming.streaming_pair_scores


def test_dmm_passes_the_option_to_its_base():
    z1, z2, _, _ = _batch()
    dmm = build("dmm", base="gca-uot", geometry="streaming", tile_size=5, warmup=0.0, seed=3)
    assert dmm.base.geometry == "streaming" and dmm.base.tile_size == 5
    ref = build("dmm", base="gca-uot", warmup=0.0, seed=3)
    torch.testing.assert_close(dmm(z1, z2), ref(z1, z2), rtol=1e-10, atol=1e-10)


def test_default_is_dense_and_listed():
    for name in OT_LOSSES + ["ot-hard"]:
        params = otcl.losses.parameters(name)
        assert params["geometry"] == "dense" and params["tile_size"] is None
    assert "geometry" not in otcl.losses.parameters("hcl")


def test_coupling_streams_its_potentials():
    z1, z2, _, _ = _batch()
    dense = build("gca-uot").coupling(z1, z2)
    out = build("gca-uot", geometry="streaming", tile_size=4).coupling(z1, z2)
    torch.testing.assert_close(out.f, dense.f, rtol=1e-10, atol=1e-10)
    plan = torch.cat([block for _, _, block in out.plan_blocks()])
    torch.testing.assert_close(plan, dense.plan, rtol=1e-10, atol=1e-12)


def test_cli_train_streaming(tmp_path):
    """``otcl train --loss-param geometry=streaming`` trains (a tiny run) as the dense loss."""
    pytest.importorskip("sklearn")
    pytest.importorskip("yaml")
    import json

    from otcl.cli import main

    tiny = [
        "--no-progress",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--set",
        "train.max_steps_per_epoch=2",
        "--set",
        "model.width=4",
        "--set",
        "train.seed=0",
    ]
    losses = []
    for geometry in ("dense", "streaming"):
        out = tmp_path / geometry
        args = [
            "train",
            "--loss",
            "gca-uot",
            "--out",
            str(out),
            *tiny,
            "--loss-param",
            f"geometry={geometry}",
        ]
        if geometry == "streaming":
            args += ["--loss-param", "tile_size=9"]
        assert main(args) == 0
        losses.append(json.loads((out / "summary.json").read_text())["final_loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("layout", ["simclr", "cross"])
@pytest.mark.parametrize("tile", [1, 7, 64])
def test_streaming_infonce_baseline_equals_infonce(layout, tile):
    from otcl.losses.streaming_infonce import streaming_infonce

    for dtype in (torch.float64, torch.float32):
        z1, z2, _, _ = _batch(dtype)
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        ref = build("infonce", layout=layout, temperature=0.3)(a, b)
        ref_grads = torch.autograd.grad(ref, (a, b))
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        got = streaming_infonce(a, b, temperature=0.3, layout=layout, tile_size=tile)
        tol = TOL[dtype]
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        for g, r in zip(torch.autograd.grad(got, (a, b)), ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=tol, atol=tol)


def test_bad_call_arguments_get_the_dense_paths_errors():
    z1, z2, _, _ = _batch()
    for name in ("gca-uot", "ot-hard"):
        loss = build(name, geometry="streaming", tile_size=4)
        with pytest.raises(ValueError, match="^negatives:"):
            loss(z1, z2, negatives=[1.0, 2.0])
        with pytest.raises(ValueError, match="^negatives:"):
            loss(z1, z2, negatives=torch.randn(3, D + 1, dtype=z1.dtype))
        with pytest.raises(ValueError, match="^z1, z2:"):
            loss(z1, z2[:-1])
    with pytest.raises(ValueError, match="^labels:"):
        build("gca-uot", geometry="streaming")(z1, z2, labels=torch.zeros(N - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="^target:"):
        build("gca-uot", geometry="streaming")(z1, z2, target=torch.ones(3, 3))
