"""The domain pipeline, declared once (:class:`~otcl.pipelines.spec.Pipeline`):
``otcl domains train | eval | compare``.

``compare`` sweeps the methods of :mod:`.compare` (``<loss>`` or ``<loss>@<alpha-beta>``)
through the shared comparison (reuse, resume, ``--jobs``, one ``results.json`` schema); its plot
is ``sweep.png`` (accuracy against alpha - beta) and one sample grid per domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..sources.images.styles import STYLES
from ..spec import Deferred, Flag, LossThen, Pipeline, backbone, register
from . import compare as cmp
from .config import Config, resolve
from .trainer import DomainTrainer, check_config, load_data, make_model

__all__ = ["SPEC"]

EPILOG_TRAIN = """examples:
  otcl domains train                                   # InfoNCE on the four-style digits
  otcl domains train --loss gca-uot --beta 0.5 --eval --out runs/d1   # remove domain structure
  otcl domains train --dataset folder --data-dir ~/data/pacs.tar.gz --device cuda
  otcl domains train --resume runs/d1
"""

EPILOG_COMPARE = """examples:
  otcl domains compare --out runs/domains              # the alpha - beta sweep, 3 seeds
  otcl domains compare --methods infonce,gca-uot@-0.5,gca-uot@+0.5 --seeds 5
  otcl domains compare --data-dir ~/data/cifar10-jpeg.tar.gz --device cuda   # CIFAR-10 styles
"""

FLAGS = (
    Flag("--dataset", "data.dataset", {"choices": ("styles", "folder"), "help": "styles "
         "(default: four style domains from digits, or from the ImageFolder copy given as "
         "--data-dir) or folder (<root>/<domain>/<class>/<image>)"}),
    Flag("--data-dir", "data.data_dir", {"metavar": "PATH", "help": "a directory or .tar.gz "
         "(see --dataset)"}),
    Flag("--skip-corrupt", "data.skip_corrupt", {"action": "store_true", "default": None,
         "help": "skip unreadable images with a warning instead of failing"}),
    Flag("--scale", "target.scale", {"choices": ("block", "pair"), "help": "how a target "
         "weight is read: block (default; the mass of its block) or pair"}),
    Flag("--alpha", "target.alpha", {"type": float, "metavar": "A",
         "help": "same-domain weight (0)"}, ("train",)),
    Flag("--beta", "target.beta", {"type": float, "metavar": "B",
         "help": "cross-domain weight (0)"}, ("train",)),
    Flag("--eval", None, {"action": "store_true", "help": "probe the run when done "
         "(eval.json)"}, ("train",)),
)  # fmt: skip


def _describe_eval(r: dict[str, Any]) -> str:
    return (
        f"{r['loss_name']} (alpha {r['alpha']:g}, beta {r['beta']:g}): class kNN "
        f"{100 * r['knn']:.1f}%, linear {100 * r['linear']:.1f}%; domain linear "
        f"{100 * r['domain']:.1f}% (chance {100 * r['domain_chance']:.0f}%); leave-one-domain-out "
        f"{100 * r['lodo']:.1f}% -> {r['run']}/eval.json"
    )


def _describe_train(trainer: Any, s: dict[str, Any]) -> str:
    return (
        f"{trainer.cfg.loss.name} (alpha {trainer.cfg.target.alpha:g}, beta "
        f"{trainer.cfg.target.beta:g}): {s['epochs']} epochs, final loss {s['final_loss']:.4f}, "
        f"{s['seconds_per_epoch']:.2f} s/epoch -> {trainer.out}"
    )


def _method_losses(method: str) -> tuple[str, ...]:
    return (cmp.parse_method(method)[0],)


def _plot(results: dict[str, Any], out: Path) -> list[Path]:
    """``sweep.png`` and a sample grid per domain (the data rebuilt from the saved config)."""
    paths = cmp.plot_sweep(results, out)
    try:
        from ..sources.images import save_domain_grids

        paths += save_domain_grids(load_data(Config.from_dict(results["config"])), out)
    except ImportError:  # no Pillow: the sweep plot alone
        pass
    return paths


SPEC = register(
    Pipeline(
        name="domains",
        help="images with domains: GCA's domain-block target, leave-one-domain-out",
        config_cls=Config,
        resolve=resolve,
        check=LossThen(check_config),
        load_data=load_data,
        build_model=make_model,
        trainer_cls=DomainTrainer,
        methods=cmp.METHODS,
        method_config=cmp.method_config,
        method_name=cmp.method_name,
        record=cmp.record,
        evaluate=Deferred(f"{__package__}.evaluate", "evaluate_run"),
        eval_file="eval.json",
        eval_after_train=True,
        describe_eval=_describe_eval,
        describe_train=_describe_train,
        encoder=backbone,
        method_losses=_method_losses,
        info=cmp.info,
        table=cmp.format_table,
        plot=_plot,
        plot_files=("sweep.png", *(f"domain-{s}.png" for s in STYLES)),
        parallel_by_default=True,
        flags=FLAGS,
        examples={"train": EPILOG_TRAIN, "compare": EPILOG_COMPARE},
    )
)
