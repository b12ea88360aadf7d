"""The self-supervised image pipeline, declared once (:class:`~otcl.pipelines.spec.Pipeline`).

``otcl ssl train | eval | compare`` (short forms ``otcl train | eval | compare``), the shared
comparison and :class:`~otcl.pipelines.runs.Run` read this spec and nothing else.
"""

from __future__ import annotations

from typing import Any

from ..spec import Deferred, Flag, LossThen, Pipeline, backbone, register
from . import compare as cmp
from .config import Config, resolve
from .trainer import SSLTrainer, check_image_config, load_data, make_model

__all__ = ["SPEC"]

EPILOG_TRAIN = """examples:
  otcl train                                   # InfoNCE on the bundled digits, a few seconds
  otcl train --loss gca-uot --dataset cifar10 --epochs 100 --device cuda --out runs/x
  otcl train --loss gca-uot --loss-param rho=0.5 --loss-param iters=20
  otcl train --loss gca-uot --dmm              # DMM around gca-uot
  otcl train --dataset cifar10 --data-dir cifar10-jpeg.tar.gz   # local ImageFolder copy
  otcl train --config my.yaml --set optim.lr=0.03
  otcl train --resume runs/x                   # continue an interrupted run
"""

EPILOG_COMPARE = """examples:
  otcl compare                                 # default losses on digits, 3 seeds, minutes on CPU
  otcl compare --losses infonce,gca-ince,gca-uot,iot-uni --seeds 3 --out runs/cmp
  otcl compare --losses gca-uot,gca-uot+dmm    # a loss with and without DMM
  otcl compare --dataset cifar10 --data-dir cifar10-jpeg.tar.gz --epochs 200 --device cuda
  otcl compare --loss-param temperature=0.2 --loss-param gca-uot:rho=0.5
"""

FLAGS = (
    Flag(
        "--dataset",
        "data.dataset",
        {
            "metavar": "NAME",
            "help": "digits (default), cifar10, cifar100, stl10, svhn, imagefolder",
        },
    ),
    Flag(
        "--data-dir",
        "data.data_dir",
        {
            "metavar": "PATH",
            "help": "ImageFolder directory or .tar.gz of one (train/<class>/*, test/<class>/*); "
            "for torchvision datasets without a local copy: the download root",
        },
    ),
    Flag(
        "--skip-corrupt",
        "data.skip_corrupt",
        {
            "action": "store_true",
            "default": None,
            "help": "skip unreadable images with a warning instead of failing",
        },
    ),
    Flag(
        "--eval", None, {"action": "store_true", "help": "evaluate the run when done"}, ("train",)
    ),
    Flag(
        "--knn-k",
        None,
        {"type": int, "metavar": "K", "help": "neighbours (default: the run's)"},
        ("eval",),
    ),
    Flag(
        "--knn-t",
        None,
        {"type": float, "metavar": "T", "help": "vote temperature (0.1)"},
        ("eval",),
    ),
    Flag(
        "--linear-epochs",
        None,
        {"type": int, "metavar": "N", "help": "linear-probe epochs"},
        ("eval",),
    ),
)


def _load(cfg: Config) -> Any:
    return load_data(cfg, progress=cfg.train.progress)


def _describe_eval(r: dict[str, Any]) -> str:
    return (
        f"kNN (k={r['knn_k']}, t={r['knn_t']}) {100 * r['knn']:.2f}%, linear probe "
        f"({r['linear_epochs']} epochs, final) {100 * r['linear']:.2f}%: {r['loss_name']} on "
        f"{r['dataset']} (epoch {r['epoch']}) -> {r['run']}/eval.json"
    )


def _describe_train(trainer: Any, s: dict[str, Any]) -> str:
    return (
        f"{trainer.cfg.loss.name}: {s['epochs']} epochs, final loss {s['final_loss']:.4f}, "
        f"kNN {s['knn']:.4f}, {s['seconds_per_epoch']:.2f} s/epoch, "
        f"{s['views_per_s']:.0f} views/s -> {trainer.out}"
    )


SPEC = register(
    Pipeline(
        name="ssl",
        help="self-supervised image encoders (also the short forms otcl train|eval|compare)",
        config_cls=Config,
        resolve=resolve,
        check=LossThen(check_image_config),
        load_data=_load,
        build_model=make_model,
        trainer_cls=SSLTrainer,
        methods=cmp.DEFAULT_LOSSES,
        method_config=cmp.method_config,
        method_name=cmp.method_name,
        record=cmp.record,
        evaluate=Deferred(f"{__package__}.evaluate", "evaluate_run"),
        eval_file="eval.json",
        eval_after_train=True,
        describe_eval=_describe_eval,
        describe_train=_describe_train,
        encoder=backbone,
        prepare_compare=cmp.prepare_compare,
        info=cmp.info,
        table=cmp.format_table,
        plot=cmp.plot_results,
        plot_files=("accuracy.png", "curves.png"),
        delta_metrics=("knn", "linear"),
        flags=FLAGS,
        examples={"train": EPILOG_TRAIN, "compare": EPILOG_COMPARE},
    )
)
