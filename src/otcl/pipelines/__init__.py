"""otcl's applications: training pipelines built on the library (``otcl.ot``, ``otcl.losses``).

* :mod:`otcl.pipelines.run` -- the run machinery every pipeline shares (:class:`EpochTrainer`:
  run directory, checkpoints, exact resume, metrics, progress, seeds, signals).
* :mod:`otcl.pipelines.config` -- config dataclasses, YAML/TOML files, ``section.key=value``.
* :mod:`otcl.pipelines.sources` -- what every pipeline shares: image datasets and augmentations,
  backbones, frozen features, probes.
* :mod:`otcl.pipelines.commands` -- the command-line pieces the pipelines share.
* :mod:`otcl.pipelines.compare` -- comparisons (methods x seeds) shared by the pipelines.
* :mod:`otcl.pipelines.distributed` -- training under ``torchrun``: the process group, one
  outcome for every rank, DistributedDataParallel (used by ``run`` and ``compare``).
* :mod:`otcl.pipelines.ssl` -- self-supervised image training (``otcl train/eval/compare``).

Nothing here is imported by ``import otcl``; the library never imports this package.
"""
