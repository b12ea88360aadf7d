"""otcl's applications: training pipelines built on the library (``otcl.ot``, ``otcl.losses``).

* :mod:`otcl.pipelines.engine` -- the run engine every pipeline shares, in small parts
  (``EpochTrainer``: run directory, checkpoints, exact resume, metrics, progress, seeds, signals;
  training under ``torchrun``).
* :mod:`otcl.pipelines.config` -- config dataclasses, YAML/TOML files, ``section.key=value``.
* :mod:`otcl.pipelines.sources` -- what every pipeline shares: image datasets and augmentations,
  backbones, frozen features, probes.
* :mod:`otcl.pipelines.imaging` -- what the pipelines that train an image encoder on two
  augmented views share (the ``model`` section, the encoder, ``TwoViewTrainer``).
* :mod:`otcl.pipelines.commands` -- the command-line pieces the pipelines share.
* :mod:`otcl.pipelines.compare` -- comparisons (methods x seeds) shared by the pipelines.
* :mod:`otcl.pipelines.spec` -- a pipeline declared once (:class:`~otcl.pipelines.spec.Pipeline`,
  registered by name); :mod:`otcl.pipelines.verbs` (the command line),
  :mod:`otcl.pipelines.comparison` and :mod:`otcl.pipelines.results` (comparisons and their
  ``results.json``) and :mod:`otcl.pipelines.runs` (:class:`Run`) read it.
* :mod:`otcl.pipelines.ssl` -- self-supervised image training (``otcl ssl train/eval/compare``);
  :mod:`otcl.pipelines.multimodal`, :mod:`otcl.pipelines.recsys`.

The Python API: :func:`train` (``train("ssl", cfg)``, or ``otcl.pipelines.ssl.train(cfg)``)
returns a :class:`Run`; :meth:`Run.load`, :func:`load_encoder` read a run directory back.

Nothing here is imported by ``import otcl``; the library never imports this package.
"""

from .runs import Run, load_encoder, load_run, train

__all__ = ["Run", "train", "load_run", "load_encoder"]
