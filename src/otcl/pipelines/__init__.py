"""otcl's applications: training pipelines built on the library (``otcl.ot``, ``otcl.losses``).

* :mod:`otcl.pipelines.engine` -- the run engine every pipeline shares, in small parts
  (``EpochTrainer``: run directory, checkpoints, exact resume, metrics, progress, seeds, signals;
  training under ``torchrun``).
* :mod:`otcl.pipelines.config` -- config dataclasses, YAML/TOML files, ``section.key=value``.
* :mod:`otcl.pipelines.sources` -- what every pipeline shares: image datasets and augmentations,
  backbones, frozen features, probes.
* :mod:`otcl.pipelines.commands` -- the command-line pieces the pipelines share.
* :mod:`otcl.pipelines.compare` -- comparisons (methods x seeds) shared by the pipelines.
* :mod:`otcl.pipelines.ssl` -- self-supervised image training (``otcl train/eval/compare``).

Nothing here is imported by ``import otcl``; the library never imports this package.
"""
