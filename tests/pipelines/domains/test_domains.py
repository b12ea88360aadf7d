"""The domain pipeline: the target in the training step, the probes (against scikit-learn),
the method space, bad settings, and the sweep (reuse, results, plot)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from otcl.losses import build, domain_target
from otcl.pipelines.domains.compare import method_config, method_name, parse_method
from otcl.pipelines.domains.config import Config
from otcl.pipelines.domains.evaluate import domain_accuracy, lodo_accuracy
from otcl.pipelines.domains.trainer import DomainTrainer, check_config, load_data


def _tiny(**target) -> Config:
    cfg = Config()
    cfg.data.per_domain = 40
    cfg.data.image_size = 8
    cfg.model.width = 4
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress = 1, 32, False
    cfg.train.max_steps_per_epoch = 2
    cfg.eval.linear_epochs = 2
    for k, v in target.items():
        setattr(cfg.target, k, v)
    return cfg


# -- probes --------------------------------------------------------------------------------
def _clusters(n=600, dim=6, k=4, spread=1.3, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, dim))
    lab = rng.integers(0, k, n)
    x = means[lab] + spread * rng.normal(size=(n, dim))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(lab)


def test_domain_probe_matches_sklearn_logistic_regression():
    sk = pytest.importorskip("sklearn.linear_model")
    x, d = _clusters()
    xtr, dtr, xte, dte = x[:400], d[:400], x[400:], d[400:]
    ours = domain_accuracy(xtr, dtr, xte, dte, 4, epochs=100, lr=0.1, batch_size=64, seed=0)
    mu, sd = xtr.mean(0), xtr.std(0)
    ref = sk.LogisticRegression(max_iter=2000).fit(((xtr - mu) / sd).numpy(), dtr.numpy())
    ref_acc = float((ref.predict(((xte - mu) / sd).numpy()) == dte.numpy()).mean())
    assert 0.4 < ref_acc < 0.95  # neither chance nor separable: the comparison means something
    assert abs(ours - ref_acc) <= 0.03


def test_lodo_transfers_a_shared_class_code_and_not_a_per_domain_one():
    g = torch.Generator().manual_seed(0)
    n, c, nd = 800, 5, 4
    y = torch.randint(0, c, (n,), generator=g)
    d = torch.randint(0, nd, (n,), generator=g)
    noise = 0.2 * torch.randn(n, c, generator=g)
    shared = torch.nn.functional.one_hot(y, c).float() + noise
    perm = torch.stack([torch.randperm(c, generator=g) for _ in range(nd)])
    perm[0] = torch.arange(c)
    own = torch.nn.functional.one_hot(perm[d, y], c).float() + noise  # a code per domain
    tr, te = torch.arange(n) < 600, torch.arange(n) >= 600
    opts = dict(epochs=30, lr=0.1, batch_size=64, seed=0)
    a = lodo_accuracy(shared[tr], y[tr], d[tr], shared[te], y[te], d[te], c, nd, **opts)
    b = lodo_accuracy(own[tr], y[tr], d[tr], own[te], y[te], d[te], c, nd, **opts)
    assert min(a) > 0.9
    assert max(b) < 0.6
    d_te = d[te].clone()
    d_te[d_te == 3] = 0  # domain 3 has no test images
    out = lodo_accuracy(shared[tr], y[tr], d[tr], shared[te], y[te], d_te, c, nd, **opts)
    assert out[3] != out[3] and out[0] > 0.9


# -- training ------------------------------------------------------------------------------
class _Recording(DomainTrainer):
    def build_loss(self):
        inner = build(self.cfg.loss.name)
        calls = self.calls = []

        class Rec(torch.nn.Module):
            layout = "simclr"

            def forward(self, z1, z2, **kw):
                calls.append(kw.get("target"))
                return inner(z1, z2, **kw)

        return Rec()

    def compute_loss(self, epoch, step):
        self.last_idx = self.batch_indices(self.images.shape[0], epoch, step)
        return super().compute_loss(epoch, step)


def test_a_training_step_passes_the_batch_domain_target(tmp_path):
    cfg = _tiny(alpha=0.0, beta=0.5)
    cfg.loss.name = "gca-uot"
    tr = _Recording(cfg, tmp_path / "run")
    tr.fit()
    assert len(tr.calls) == 2 and tr.calls[-1] is not None
    dom = tr.data.train_d[tr.last_idx]
    want = domain_target(dom, 0.0, 0.5, num_domains=4, scale="block")
    torch.testing.assert_close(tr.calls[-1], want)
    assert len(dom.unique()) > 1  # the batch mixes domains
    plain = _Recording(_tiny(), tmp_path / "plain")
    plain.fit()
    assert plain.calls == [None, None]  # alpha = beta = 0: the identity target


def test_bad_settings_name_the_setting(tmp_path):
    for setting, value, match in (
        ("target.alpha", -0.1, "target.alpha: expected a finite number >= 0"),
        ("target.beta", float("inf"), "target.beta: expected a finite number >= 0"),
        ("target.scale", "row", "target.scale: expected one of pair, block"),
        ("data.dataset", "pacs", "data.dataset: expected one of styles, folder"),
        ("data.per_domain", 2, "data.per_domain"),
    ):
        cfg = _tiny()
        sec, key = setting.split(".")
        setattr(getattr(cfg, sec), key, value)
        with pytest.raises(ValueError, match=match):
            DomainTrainer(cfg, tmp_path / "x")
    cfg = _tiny(alpha=0.3)
    cfg.loss.name = "dcl"
    with pytest.raises(ValueError, match="target: loss 'dcl' takes no target plan"):
        check_config(cfg)
    cfg = _tiny()
    cfg.data.dataset = "folder"
    with pytest.raises(ValueError, match="data.data_dir: dataset 'folder' needs"):
        check_config(cfg)


def test_folder_data_trains(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for dom in ("photo", "art"):
        for c in ("a", "b"):
            (tmp_path / "d" / dom / c).mkdir(parents=True)
            for i in range(12):
                arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / "d" / dom / c / f"{i}.png")
    cfg = _tiny(alpha=0.5)
    cfg.data.dataset, cfg.data.data_dir, cfg.data.image_size = "folder", str(tmp_path / "d"), 8
    cfg.model.arch = "small-cnn"
    data = load_data(cfg)
    assert data.domains == ["art", "photo"] and data.image_shape == (3, 8, 8)
    s = DomainTrainer(cfg, tmp_path / "run", data=data).fit()
    assert s["epochs"] == 1 and s["alpha"] == 0.5


# -- methods and the sweep -----------------------------------------------------------------
def test_method_space():
    assert parse_method("gca-uot@-0.25") == ("gca-uot", -0.25)
    assert parse_method("infonce") == ("infonce", None)
    for bad, match in (("nope@0.1", "unknown loss 'nope'"), ("gca-uot@x", "a number after")):
        with pytest.raises(ValueError, match=match):
            parse_method(bad)
    for m, ab in (("gca-uot@+0.50", (0.5, 0.0)), ("gca-ince@-0.25", (0.0, 0.25))):
        cfg = method_config(Config(), m, {"eps": 0.4}, {"gca-uot": {"rho": 0.3}})
        assert (cfg.target.alpha, cfg.target.beta) == ab and method_name(cfg) == m
    assert method_config(Config(), "gca-uot", {}, {"gca-uot": {"rho": 0.3}}).loss.params == {
        "rho": 0.3
    }


def test_sweep_reuses_finished_runs_and_writes_results(tmp_path):
    from otcl.pipelines.comparison import compare
    from otcl.pipelines.spec import get

    spec = get("domains")
    lines = []
    methods = ["infonce", "gca-uot@-0.50"]
    out = tmp_path / "s"
    r = compare(spec, _tiny(), methods, 2, out, plot=False, log=lines.append)
    assert list(r["methods"]) == methods and r["methods"]["infonce"]["seeds"] == [0, 1]
    m = r["methods"]["gca-uot@-0.50"]["metrics"]
    for k in ("knn", "linear", "domain", "domain_knn", "lodo", "lodo_photo"):
        assert len(m[k]["per_seed"]) == 2 and 0.0 <= m[k]["mean"] <= 1.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema"] == "otcl-results/1" and saved["pipeline"] == "domains"
    assert "| gca-uot | -0.50 | 2 |" in (out / "table.md").read_text()
    lines.clear()
    again = compare(spec, _tiny(), methods, 2, out, plot=False, log=lines.append)
    assert sum("reusing" in s for s in lines) == 4
    assert (
        again["methods"]["infonce"]["metrics"]["knn"] == r["methods"]["infonce"]["metrics"]["knn"]
    )
    if importlib.util.find_spec("matplotlib") and importlib.util.find_spec("PIL"):
        paths = spec.plot(again, out)
        assert [p.name for p in paths] == list(spec.plot_files)
