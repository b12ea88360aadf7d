"""The epoch loop every otcl pipeline shares, and the hooks a pipeline fills in.

:class:`EpochTrainer` composes the engine's parts -- its assembly (:mod:`.assemble`), the
step mechanics it inherits (:mod:`.step`: batch indices, generators, the optimizer step, the
memory bank), the run directory and its lock (:mod:`.rundir`), checkpoints
(:mod:`.checkpoint`), the identity of a run (:mod:`.identity`), the metrics log and summary
(:mod:`.runlog`), the optimizer and schedule (:mod:`.optim`), the device, seeds and autocast
(:mod:`.runtime`), signals (:mod:`.signals`), progress (:mod:`.progress`) and ``torchrun``
(:mod:`.distributed`) -- and a pipeline only says what one step computes.
:mod:`otcl.pipelines.engine` lists what the whole guarantees.

Subclass contract
-----------------
Override (required):

* :meth:`EpochTrainer.build` -- load the data and set ``self.model`` (the ``nn.Module`` whose
  ``state_dict`` is checkpointed; several encoders go into one ``nn.ModuleDict``),
  ``self.loss_fn`` (usually ``self.build_loss()``) and ``self.steps_per_epoch``. It runs after
  the device is picked and the global RNGs are seeded; ``self.batch_size`` holds
  ``cfg.train.batch_size`` and may be changed here.
* :meth:`EpochTrainer.compute_loss` ``(epoch, step) -> loss`` -- the scalar loss (with its
  graph) of step ``step`` of epoch ``epoch``. Draw the batch and any randomness from
  ``(seed, epoch, step)`` with :meth:`batch_indices` and :meth:`step_generator` (never from a
  generator carried across steps): that is what makes a resumed run identical. Call the model
  through ``self.forward_model`` (``self.forward_model(x)``, or any method of the model's own,
  ``self.forward_model.encode(x)``): under torchrun that is DistributedDataParallel.
  Or override :meth:`EpochTrainer.train_step` ``(epoch, step) -> detached loss`` for full
  control of the update (then call :meth:`optimize` yourself).

Override (optional): :meth:`resolve_config` (presets), :meth:`check_config` (call ``super()``),
:meth:`default_out`, :meth:`build_optimizer`, :meth:`start_epoch` (default: the loss's
``set_epoch`` hook), :meth:`evaluate` ``(final) -> {name: value}`` (end-of-epoch metrics; with
``final=True`` once after the last epoch, into the last metrics record and the summary),
:meth:`extra_state` / :meth:`load_extra_state` (the pipeline's own state to checkpoint),
:meth:`selection_rule` and :meth:`validate` (model selection on validation data: the best
epoch's weights, early stopping; :mod:`.selection`),
:meth:`summarize` (fields added to ``summary.json``), ``throughput_unit`` and
:meth:`items_per_step` (the ``<unit>_per_s`` column), :attr:`tag` (the log-line prefix),
:attr:`volatile` and :attr:`measures` (the pipeline's settings that do not change what a run
is: :mod:`.identity`), :attr:`outputs` (its files besides the checkpoint and config).

A caller may stop the loop cleanly: :meth:`EpochTrainer.request_stop` (from any thread, or
from a hook) or ``fit(deadline=...)`` stop it at the next step boundary; the checkpoint is
written and :class:`TrainingStopped` raised, and ``resume=True`` continues exactly.

Under ``torchrun`` the base does the distributed work (:mod:`otcl.pipelines.engine`).

The config is any dataclass with the shared sections ``train`` (:class:`~otcl.pipelines.config.
TrainConfig`), ``optim`` (:class:`~otcl.pipelines.config.OptimConfig`) and ``loss``
(:class:`~otcl.pipelines.config.LossConfig`), e.g. :class:`~otcl.pipelines.config.RunConfig`.

Example:
    >>> import torch
    >>> from otcl.pipelines.config import RunConfig
    >>> class Toy(EpochTrainer):
    ...     def build(self):
    ...         g = torch.Generator().manual_seed(0)
    ...         self.x = torch.randn(64, 8, generator=g)
    ...         self.model = torch.nn.Linear(8, 4)
    ...         self.loss_fn = self.build_loss()
    ...         self.steps_per_epoch = 64 // self.batch_size
    ...     def compute_loss(self, epoch, step):
    ...         x = self.x[self.batch_indices(64, epoch, step)]
    ...         noise = torch.randn(x.shape, generator=self.step_generator("noise"))
    ...         z = self.forward_model(torch.cat([x, x + 0.1 * noise]))
    ...         return self.loss_fn(z[: len(x)], z[len(x) :])
    >>> cfg = RunConfig()
    >>> cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr, cfg.train.progress = 2, 16, 0.1, False
    >>> import tempfile
    >>> summary = Toy(cfg, tempfile.mkdtemp() + "/run").fit()
    >>> summary["epochs"]
    2
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import given
from . import assemble, checkpoint, identity, loop, optim
from .distributed import Session, agreed, init_from_env, main_log, shard_batch
from .loggers import ScalarLogger, check_log
from .memory import check_memory_bank
from .progress import stderr_line
from .rundir import METRICS, SUMMARY, RunLock, check_owner, prepare_run_dir
from .runlog import RunningLoss
from .selection import BEST, SelectionRule, Selector
from .signals import DeferredSignals
from .step import StepTools
from .stops import Stops, TrainingDiverged, TrainingInterrupted, TrainingStopped

__all__ = ["EpochTrainer", "TrainingInterrupted", "TrainingStopped", "TrainingDiverged"]


# -- the trainer ---------------------------------------------------------------------------
class EpochTrainer(StepTools):
    """Trains ``cfg`` into ``out`` (or resumes it); :meth:`fit` returns the summary dict.

    See the module docstring for what a subclass provides and what this class guarantees.

    Args:
        cfg: the configuration (``resolve_config`` is applied to a copy).
        out: run directory (default ``cfg.train.out``, else :meth:`default_out`).
        resume: continue from ``out/checkpoint.pt``; without it an existing checkpoint in
            ``out`` is an error (nothing is overwritten silently).
        extend: with ``resume``, allow a larger ``train.epochs`` than the run's.
        data: an already loaded dataset, kept as :attr:`given_data` for :meth:`build` to use
            instead of loading it (``compare`` loads it once for all its runs).
        log: where progress lines go (standard error by default).
    """

    #: the pipeline whose runs this trainer makes (recorded in the run's ``owner.json``: no
    #: other command writes into the run directory, :func:`.rundir.check_owner`)
    pipeline: str | None = None
    #: the throughput column of metrics.jsonl and summary.json: ``<unit>_per_s``
    throughput_unit: str = "samples"
    #: settings that do not change what a run is: a resume may change them, and a comparison
    #: or a benchmark ignores them when it meets the run again (:mod:`.identity`)
    volatile: tuple[str, ...] = identity.VOLATILE
    #: entries of :attr:`volatile` that change the numbers a run reports (not its training):
    #: a resume may change them, but a comparison does not reuse numbers measured otherwise
    measures: tuple[str, ...] = ()
    #: files a run writes besides its checkpoint and config (removed when a run starts afresh)
    outputs: tuple[str, ...] = (METRICS, SUMMARY, BEST)

    #: set by :meth:`build` (with ``steps_per_epoch``); ``forward_model`` calls ``model``
    #: (under torchrun: through DistributedDataParallel)
    model: nn.Module
    loss_fn: nn.Module
    forward_model: Any
    #: the run directory
    out: Path
    #: ``world`` processes (torchrun), this one ``rank``
    world: int
    rank: int
    #: rank 0: the process that writes the run directory and logs
    is_main: bool
    #: where progress lines go (rank 0 only)
    log: Callable[[str], None]
    #: how the loop ends early (signals, :meth:`request_stop`, deadlines)
    stops: Stops
    #: this rank's share of the global batch, set by :meth:`_shard_batch`
    local_batch_size: int
    local_rows: slice
    #: the data's :mod:`.fingerprint` (rank 0; recorded in the checkpoint)
    data_fingerprint: dict[str, str]
    #: epochs completed, and steps of the current epoch completed
    epoch: int
    step_in_epoch: int
    #: time spent in the current epoch before a resume
    epoch_seconds: float
    running_loss: RunningLoss
    #: whether this run continued from a checkpoint
    resumed: bool
    _signals: DeferredSignals | None = None
    #: model selection on validation data (None: the pipeline has no validation set)
    selector: Selector | None = None
    #: whether the step passes :meth:`bank_negatives` to its loss (``loss.memory_bank``)
    supports_memory_bank: bool = False
    #: where :meth:`fit` sends each epoch's scalars besides metrics.jsonl (``train.log``)
    scalar_logger: ScalarLogger = ScalarLogger()

    def __init__(
        self,
        cfg: Any,
        out: str | Path | None = None,
        *,
        resume: bool = False,
        extend: bool = False,
        data: Any = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.given_data = data
        #: the batch size the caller asked for (None: the pipeline's preset, or a resume,
        #: which keeps the size the run started with); see :meth:`fit_batch`
        asked = "batch_size" in given(cfg.train)
        self.batch_requested: int | None = cfg.train.batch_size if asked and not resume else None
        #: torchrun's process group (None: one process)
        self.session: Session | None = init_from_env()
        self.world = 1 if self.session is None else self.session.world
        self.rank = 0 if self.session is None else self.session.rank
        self.is_main = self.rank == 0
        self.log = main_log(log or stderr_line)
        self._lock: RunLock | None = None
        self.stops = Stops()
        try:
            with agreed():
                self.cfg: Any = self.resolve_config(cfg)
                self.check_config()
                t = self.cfg.train
                if out is None:
                    self.out = Path(t.out if t.out is not None else self.default_out())
                else:
                    self.out = Path(out)
                t.out = str(self.out)
                if extend and not resume:
                    raise ValueError("--extend: only with --resume (it lengthens an existing run)")
                if self.is_main:  # a bad --out fails here, before any data is loaded
                    prepare_run_dir(self.out)
                    self._lock = RunLock(self.out)
                    check_owner(self.out, self.owner)
            assemble.assemble(self, resume, extend)
        except BaseException:
            self.close()
            raise

    def _shard_batch(self) -> None:
        """Split the global batch ``self.batch_size`` over the ranks (``local_batch_size`` rows
        each, this rank's ``local_rows`` of it)."""
        #: rows per rank; ``local_rows``: this rank's rows of each global batch
        self.local_batch_size, self.local_rows = shard_batch(self.batch_size, self.world, self.rank)

    def close(self) -> None:
        """Release the run directory's lock (:meth:`fit` does it when it returns)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- hooks a pipeline overrides --------------------------------------------------------
    def resolve_config(self, cfg: Any) -> Any:
        """The config this run uses (e.g. presets filled in); must return a new object."""
        return copy.deepcopy(cfg)

    def check_config(self) -> None:
        """Raise ``ValueError`` naming the first invalid setting (subclasses call ``super()``)."""
        loop.check_loop(self.cfg)
        optim.check_optim(self.cfg.optim)
        loop.check_loop_counts(self.cfg)
        loss = getattr(self.cfg, "loss", None)
        if loss is not None and loss.dmm_mix not in ("input", "embedding"):
            raise ValueError(f"loss.dmm_mix: expected input or embedding, got {loss.dmm_mix!r}")
        check_memory_bank(self.cfg, self.supports_memory_bank, type(self).__name__)
        check_log(self.cfg.train.log)

    def default_out(self) -> str:
        """The run directory when neither ``out`` nor ``train.out`` is given."""
        loss = getattr(self.cfg, "loss", None)
        name = loss.name if loss is not None else type(self).__name__.lower()
        return f"runs/{name}-s{self.cfg.train.seed}"

    def build(self) -> None:
        """Set ``self.model``, ``self.loss_fn`` and ``self.steps_per_epoch`` (see the module)."""
        raise NotImplementedError

    def compute_loss(self, epoch: int, step: int) -> torch.Tensor:
        """The scalar loss (with its graph) of step ``step`` (0-based) of epoch ``epoch``."""
        raise NotImplementedError

    def train_step(self, epoch: int, step: int) -> torch.Tensor:
        """One optimisation step; returns the detached loss (no host sync)."""
        loss = self.compute_loss(epoch, step)
        self.optimize(loss)
        return loss.detach()

    def start_epoch(self, epoch: int) -> None:
        """Called before the first step of every epoch (also a resumed one)."""
        set_epoch = getattr(self.loss_fn, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def evaluate(self, final: bool) -> dict[str, float]:
        """Metrics at the end of an epoch (``final``: once after the last one); {} for none."""
        return {}

    def selection_rule(self) -> SelectionRule | None:
        """How the run selects its model on validation data (None: no validation; the final
        weights are evaluated). With a rule, :meth:`validate` is called every ``rule.every``
        epochs and after the last one (:mod:`.selection`)."""
        return None

    def validate(self) -> dict[str, float]:
        """Metrics on the validation data (rank 0, model in eval mode is up to the pipeline);
        must hold the rule's ``metric``. Never the test set."""
        raise NotImplementedError(f"{type(self).__name__} has a selection rule but no validate()")

    def extra_state(self) -> dict[str, Any]:
        """The pipeline's own state to checkpoint (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def summarize(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Fields of ``summary.json`` (``summary`` holds the generic ones)."""
        return summary

    def embedding_dim(self) -> int:
        """The width of the embeddings a step enqueues (with :attr:`supports_memory_bank`)."""
        raise NotImplementedError(f"{type(self).__name__}.embedding_dim")

    def items_per_step(self) -> int:
        """Items per step for the throughput column (default: the batch size)."""
        return self.batch_size

    @property
    def owner(self) -> dict[str, str | None]:
        """What ``owner.json`` of this run records: a run of :attr:`pipeline`."""
        return {"kind": "run", "pipeline": self.pipeline}

    @property
    def tag(self) -> str:
        """Prefix of log lines and the progress bar."""
        loss = getattr(self.cfg, "loss", None)
        return f"{loss.name} s{self.cfg.train.seed}" if loss is not None else "train"

    def loss_is_global(self) -> bool:
        """Whether the loss couples the global batch (``gather_distributed``): every rank then
        returns the global value and back-propagates its share, so the trainer multiplies it by
        the world size before backward (DDP averages gradients). A loss that is a mean over this
        rank's rows (e.g. a per-sample triplet loss) is not: DDP's average is already the
        gradient of the global mean."""
        modules = getattr(self.loss_fn, "modules", None)
        return modules is not None and any(
            getattr(m, "gather_distributed", False) for m in modules()
        )

    # -- helpers for subclasses ------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        """``optim`` over ``self.model``: lr x batch/128, weight decay on weights (ndim > 1),
        torch's fused implementation with ``optim.fused`` where this torch and device have one
        (:func:`.optim.build_optimizer`)."""
        return optim.build_optimizer(
            self.model, self.cfg.optim, self.batch_size, self.device, self.log
        )

    def config_to_save(self) -> Any:
        """The config written to ``config.yaml`` (default: the run's). A pipeline whose settings
        may be rules (None: "computed from the others") writes the values that run instead;
        the checkpoint keeps the config itself."""
        return self.cfg

    def derived(self) -> dict[str, Any]:
        """Values that follow from the settings, recorded under ``derived:`` in ``config.yaml``
        for the reader: the learning rate the optimizer runs at and its rule, the batch it
        applies to, and DMM's margin, ramp offset and weight when the loss holds a DMM (a
        pipeline adds its own with ``super()``)."""
        out: dict[str, Any] = {
            "effective_lr": optim.effective_lr(self.cfg.optim, self.batch_size),
            "lr_rule": optim.LR_RULE,
            "batch_size": self.batch_size,
        }
        from ...losses import DMM

        loss = self.loss_fn if isinstance(self.loss_fn, nn.Module) else None
        dmm = next((m for m in loss.modules() if isinstance(m, DMM)), None) if loss else None
        if dmm is not None:  # the margin and ramp DMM runs with, defaults included
            out["dmm"] = {"margin": dmm.margin, "warmup": dmm.warmup, "weight": dmm.weight}
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as written to ``checkpoint.pt``
        (:func:`.checkpoint.run_state`)."""
        return checkpoint.run_state(self)

    def _finite_state(self) -> bool:
        """Whether every parameter and buffer of the model is finite (one host sync)."""
        return checkpoint.finite_weights(self.model)

    def save(self) -> Path:
        """Write the checkpoint atomically; returns its path (:func:`.checkpoint.save_run`).

        Raises:
            TrainingDiverged: the weights are no longer finite (the last good checkpoint stays).
        """
        return checkpoint.save_run(self)

    def restore(self, st: dict[str, Any]) -> None:
        """Load a checkpoint's state (see :meth:`state`) into this trainer."""
        checkpoint.restore_run(self, st)

    # -- stopping early --------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop at the next step boundary: it writes the checkpoint and
        :meth:`fit` raises :class:`TrainingStopped`. Safe from another thread or a hook."""
        self.stops.request(reason)

    # -- training --------------------------------------------------------------------------
    def fit(self, *, deadline: float | None = None) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the summary (also written to ``summary.json``).

        Args:
            deadline: a wall-clock time (``time.time()``) after which the loop stops at the
                next step boundary, checkpointed (:class:`TrainingStopped`).
        """
        self.stops.deadline = deadline
        if self._lock is None and self.is_main:
            self._lock = RunLock(self.out)
        try:
            return loop.run_epochs(self)
        finally:
            self.close()
