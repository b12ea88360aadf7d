"""The accuracy protocol's recipe and ledger (``queue.json``): the runs, their status, progress
and results, read and written atomically. Part of ``gpu_accuracy.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODULE = "gpu_accuracy"  # the workers run this module's main() (imported by name)

LEDGER = "queue.json"
LEDGER_FORMAT = 1
RECIPE_FILE = ROOT / "configs" / "cifar10-simclr.yaml"

#: the protocol's runs, in training order: the comparisons that matter most come first
PROTOCOL: tuple[tuple[str, int], ...] = (
    ("infonce", 0),
    ("gca-uot", 0),
    ("gca-ince", 0),
    ("iot-uni", 0),
    ("infonce", 1),
    ("gca-uot", 1),
    ("hcl", 0),
    ("ot-hard", 0),
    ("infonce+dmm", 0),
    ("infonce", 2),
    ("gca-uot", 2),
)
DRY_PROTOCOL: tuple[tuple[str, int], ...] = (("infonce", 0), ("gca-uot", 0))
#: encoder passes per step relative to two views (DMM re-encodes the mixed view-1 batch)
COST = {"infonce+dmm": 1.5}


# -- recipe --------------------------------------------------------------------------------
def recipe(dry_run: bool) -> dict[str, Any]:
    """The fixed training recipe as a resolved config dict (loss and seed are per run)."""
    from otcl.pipelines.config import load_config
    from otcl.pipelines.ssl.config import Config, resolve

    if dry_run:  # the CIFAR-10 preset on a tiny archive, a 4-channel CNN: seconds on CPU
        cfg = Config()
        cfg.data.dataset = "cifar10"
        cfg.model.arch, cfg.model.width, cfg.model.head_hidden, cfg.model.head_out = (
            "small-cnn",
            4,
            16,
            8,
        )
        cfg.train.epochs, cfg.train.batch_size, cfg.train.max_steps_per_epoch = 2, 16, 3
        cfg.train.device, cfg.train.amp, cfg.train.threads = "cpu", "none", 1
        cfg.train.checkpoint_every = 1
        cfg.eval.linear_epochs, cfg.eval.knn_k = 3, 10
    else:
        cfg = load_config(RECIPE_FILE, Config)
        cfg.eval.knn_every = 50  # four kNN points for the curves; the recipe file says 20
    cfg.train.progress = False
    cfg.loss.name, cfg.loss.params, cfg.train.seed = "infonce", {}, 0
    return resolve(cfg).to_dict()


def comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without the settings that change neither a run nor its numbers: the image
    trainer's ``volatile`` list (the one a resume and ``otcl compare`` use), less its
    ``measures`` (the evaluation: the ledger holds measured numbers)."""
    from otcl.pipelines.engine.identity import comparable as strip
    from otcl.pipelines.engine.identity import unmeasured
    from otcl.pipelines.ssl.trainer import SSLTrainer

    return strip(cfg, unmeasured(SSLTrainer.volatile, SSLTrainer.measures))


def run_config(
    rec: dict[str, Any], run: dict[str, Any], data_dir: str | None, out: Path
) -> dict[str, Any]:
    """The full config of one run of the ledger: the recipe with the run's method (a loss, or
    ``<loss>+dmm``) as the image pipeline's comparison makes it, its seed and directory."""
    from otcl.pipelines.spec import get

    spec = get("ssl")
    cfg = spec.method_config(spec.config_cls.from_dict(rec), run["loss"], run["params"], {})
    cfg.train.seed, cfg.train.out, cfg.data.data_dir = run["seed"], str(out), data_dir
    return cfg.to_dict()


# -- ledger --------------------------------------------------------------------------------
def run_id(loss: str, seed: int) -> str:
    """``infonce+dmm``, seed 0 -> ``infonce-dmm-s0`` (plain characters: a file-name part)."""
    return f"{loss.replace('+', '-')}-s{seed}"


def new_ledger(rec: dict[str, Any], protocol) -> dict[str, Any]:
    """A fresh ledger: the recipe and one pending run per ``(loss, seed)`` of ``protocol``."""
    runs = []
    for loss, seed in protocol:
        runs.append(
            {
                "id": run_id(loss, seed),
                "loss": loss,
                "seed": seed,
                "params": {},  # loss parameters on top of the recipe
                "status": "pending",  # pending | partial | trained | done | failed
                "epoch": 0,
                "global_step": 0,
                "total_steps": None,
                "train_seconds": 0.0,
                "compact_resumes": 0,
                "parts": 0,
                "calls": [],
                "result": None,
                "error": None,
                "notes": [],
            }
        )
    return {
        "format": LEDGER_FORMAT,
        "recipe": rec,
        "runs": runs,
        "concurrency": None,
        "overhead": None,
        "calls": [],
    }


def load_ledger(state: Path) -> dict[str, Any]:
    """The ledger of a state folder; ``ValueError`` if it is unreadable or of another format."""
    path = state / LEDGER
    try:
        ledger = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--resume-from: cannot read {path}: {e}") from None
    if ledger.get("format") != LEDGER_FORMAT:
        raise ValueError(f"--resume-from: {path} is not a ledger of format {LEDGER_FORMAT}")
    return ledger


def save_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    from otcl.pipelines.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


def remaining(ledger: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs neither done nor failed."""
    return [r for r in ledger["runs"] if r["status"] not in ("done", "failed")]


def status_lines(ledger: dict[str, Any]) -> list[str]:
    """One line per run: status, progress, results."""
    out = []
    for r in ledger["runs"]:
        prog = f"epoch {r['epoch']}/{ledger['recipe']['train']['epochs']}"
        res = r["result"] or {}
        acc = f", kNN {res['knn']:.4f}, linear {res['linear']:.4f}" if res else ""
        err = f", error: {r['error']}" if r["error"] else ""
        out.append(f"{r['id']:12s} {r['status']:8s} {prog}{acc}{err}")
    return out
