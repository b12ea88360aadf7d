"""A trained encoder loaded back for downstream use.

Shows the pipeline's Python API: ``otcl.pipelines.ssl.train(config, out=...)`` trains a run
(gca-uot on scikit-learn's bundled digits, no download) and returns a ``Run``; later, in
another program, ``load_encoder(run_dir)`` gives the trained backbone (eval mode, no
projection head) and ``Run.load(run_dir)`` the whole run (config, summary, model). The
encoder's features then feed a downstream task: here a nearest-class-mean classifier fit on
the training images' features and scored on the test images.

    python examples/load_encoder.py            # ~1 minute on a CPU
    python examples/load_encoder.py --tiny     # one short epoch (what the tests run)
"""

from __future__ import annotations

import sys
import tempfile

import torch

from otcl.pipelines import Run, load_encoder, ssl
from otcl.pipelines.ssl.trainer import make_augment


def main(tiny: bool = False, out: str | None = None) -> dict[str, float]:
    out = out or tempfile.mkdtemp(prefix="otcl-example-")
    cfg = ssl.Config()  # the bundled digits, a small CNN
    cfg.loss.name = "gca-uot"
    cfg.train.epochs, cfg.train.progress = (1, False) if tiny else (10, False)
    if tiny:
        cfg.train.max_steps_per_epoch = 3
    run = ssl.train(cfg, out=f"{out}/gca-uot")
    print(f"trained {run.method} into {run.dir}: kNN accuracy {run.summary['knn']:.3f}")

    # later: the backbone alone, trained, in eval mode
    encoder = load_encoder(run.dir)
    again = Run.load(run.dir)  # the whole run: config, summary, metrics, model
    data = again.data()  # the run's dataset, as its config says (uint8 images, labels)
    preprocess = make_augment(again.config, data).plain  # the run's evaluation preprocessing

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.normalize(encoder(preprocess(images)), dim=1)

    f_train, f_test = features(data.train_x), features(data.test_x)
    classes = int(data.train_y.max()) + 1
    means = torch.stack([f_train[data.train_y == c].mean(0) for c in range(classes)])
    acc = float(((f_test @ means.T).argmax(1) == data.test_y).float().mean())
    print(f"features {tuple(f_test.shape)}; nearest-class-mean accuracy on the test set {acc:.3f}")
    return {"knn": float(run.summary["knn"]), "ncm": acc}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
