"""kNN and linear probes against brute-force references and separable data."""

from __future__ import annotations

import pytest
import torch

from otcl.pipelines.sources.probes import knn_accuracy, knn_predict, linear_probe


def test_knn_matches_bruteforce_reference():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(50, 6, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    test = torch.randn(7, 6, generator=g)
    pred = knn_predict(test, train, labels, 3, k=5, t=0.2, chunk=3)
    for i in range(7):
        s = torch.nn.functional.cosine_similarity(test[i : i + 1], train)
        top = s.topk(5)
        votes = torch.zeros(3)
        for w, j in zip(top.values, top.indices, strict=True):
            votes[labels[j]] += torch.exp(w / 0.2)
        assert pred[i] == votes.argmax()
    acc = knn_accuracy(train, labels, test, pred, 3, k=5, t=0.2)
    assert acc == 1.0  # scored against its own predictions
    with pytest.raises(ValueError, match="k: expected"):
        knn_predict(test, train, labels, 3, k=0)
    with pytest.raises(ValueError, match="t: expected"):
        knn_predict(test, train, labels, 3, t=0.0)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(test, train, labels[:10], 3)


def test_linear_probe_separable_data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 5
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 16, generator=g)
    res = linear_probe(x[:150], y[:150], x[150:], y[150:], 4, epochs=20, batch_size=32)
    assert res.test_accuracy == 1.0 and res.train_accuracy == 1.0
    assert res.history[-1]["epoch"] == 20
    with pytest.raises(ValueError, match="epochs"):
        linear_probe(x, y, x, y, 4, epochs=0)


def test_linear_probe_returns_the_classifier_it_scored():
    """The result carries the trained probe: scoring the test set with it gives the reported
    accuracy, and it scores other sets without training again (bit-identical to a second
    probe trained on the same features with the same seed)."""
    from otcl.pipelines.sources.probes import fit_linear_probe

    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 8, generator=g) * 2
    y = torch.arange(120) % 3
    x = centers[y] + 1.5 * torch.randn(120, 8, generator=g)
    res = linear_probe(x[:80], y[:80], x[80:], y[80:], 3, epochs=6, batch_size=16, seed=4)
    clf = res.classifier
    assert clf.accuracy(x[80:], y[80:]) == res.test_accuracy
    assert clf.accuracy(x[:80], y[:80]) == res.train_accuracy
    assert clf.history == res.history
    # the prediction is argmax of the standardised features through the layer
    ref = ((x[80:] - x[:80].mean(0)) / x[:80].std(0)) @ clf.linear.weight.T + clf.linear.bias
    torch.testing.assert_close(clf.logits(x[80:]), ref)
    assert torch.equal(clf.predict(x[80:]), clf.logits(x[80:]).argmax(1))
    other, y_other = x[80:100] + 0.5, y[80:100]
    again = fit_linear_probe(x[:80], y[:80], 3, epochs=6, batch_size=16, seed=4)
    assert torch.equal(again.logits(other), clf.logits(other))
    r = linear_probe(x[:80], y[:80], other, y_other, 3, epochs=6, batch_size=16, seed=4)
    assert r.test_accuracy == clf.accuracy(other, y_other)
