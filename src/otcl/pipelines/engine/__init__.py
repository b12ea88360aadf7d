"""The run engine every otcl pipeline shares: one training loop, one run directory format.

Small parts, one job each, composed by :class:`~otcl.pipelines.engine.trainer.EpochTrainer`:

* :mod:`.trainer` -- ``EpochTrainer``: the hooks a pipeline fills in;
* :mod:`.assemble` -- how a trainer is put together: resume checks, build, optimizer, restore;
* :mod:`.step` -- the step mechanics it inherits: batch indices, generators, ``optimize``;
* :mod:`.loop` -- the epoch loop: steps, stops at step boundaries, records, the summary;
* :mod:`.checkpoint` -- the checkpoint format, its safe load, a run's state, save and restore;
* :mod:`.rundir` -- the run directory, its file names and its lock;
* :mod:`.runlog` -- ``metrics.jsonl``, ``summary.json``, stale outputs, the running loss;
* :mod:`.identity` -- the one list of settings that do not change what a run is;
* :mod:`.optim` -- parameter groups, fused kernels, the learning-rate schedule;
* :mod:`.runtime` -- device, autocast, seeds, RNG states, the AMP scaler;
* :mod:`.stops` -- how a run ends early: signals, a caller's stop, a deadline, divergence;
* :mod:`.signals`, :mod:`.distributed`, :mod:`.progress` -- deferred Ctrl-C,
  ``torchrun``, the progress bar (files are written atomically by :mod:`otcl.pipelines.files`).

Nothing is imported here: ``otcl.pipelines.engine.signals`` is used by the command line before
torch loads.

The engine guarantees (docs/reliability.md lists the test of each):

* the run directory is created and probed before ``build()`` loads any data, and locked
  (:class:`~.rundir.RunLock`): one writer at a time; a new run never overwrites a checkpoint;
* ``config.yaml`` is written before the first step; checkpoints are written atomically (temp
  file, fsync, rename) in a format read with ``torch.load(weights_only=True)`` and a SHA-256
  check (:func:`~.checkpoint.save_checkpoint`, :func:`~.checkpoint.load_checkpoint`), never
  with NaN/inf weights;
* resuming from any checkpoint -- an epoch end, the end, or a signal mid-epoch -- continues
  exactly as the uninterrupted run (bit-identical weights on CPU with ``train.deterministic``);
  the metrics log is cut back to the checkpoint; a resume may not change what the run is
  (:mod:`.identity`; ``train.epochs`` grows only with ``extend``);
* SIGINT and SIGTERM during ``fit`` are deferred to the end of the current step, then the run
  saves and raises :class:`~.stops.TrainingInterrupted` (a second signal aborts); a caller's
  ``request_stop`` or ``fit(deadline=...)`` stops the same way (:class:`~.stops.TrainingStopped`);
* the loss is read back to the host only every ``train.log_every`` steps; a non-finite loss,
  embedding or weight stops the run with :class:`~.stops.TrainingDiverged`;
* under ``torchrun``: the same training as one process on the same global batch (up to float
  rounding, without BatchNorm on CPU); one checkpoint, written by rank 0, that every rank
  resumes from (per-rank RNG states included); a signal to any rank stops every rank at the same
  step boundary; a setting that fails on any rank fails on every rank, printed once.

Under ``torchrun`` (:mod:`.distributed`) the trainer does the distributed work:
``cfg.train.batch_size`` stays the **global** batch; ``batch_indices`` returns this rank's
``local_batch_size`` rows (``local_rows`` of the global batch); the model is wrapped in
DistributedDataParallel (SyncBatchNorm on CUDA); ``build_loss`` adds
``gather_distributed=True``, and the loss is multiplied by the world size before backward when
it couples the global batch (``loss_is_global``); rank 0 alone writes files, logs and
evaluates. All a pipeline adds is how its batch is sharded: randomness drawn per sample must be
drawn for the global batch and sliced with ``local_rows`` (e.g. the image augmentations), so
that every sample gets the draw it gets in one process. Data loads go through
:func:`~.distributed.local_main_first` (a node's first process downloads first).
"""
