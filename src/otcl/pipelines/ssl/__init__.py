"""Self-supervised (SimCLR-style) image pipeline: ``otcl train``, ``otcl eval``, ``otcl compare``.

Its datasets, augmentations, encoders, frozen features and probes are shared with the other
pipelines in :mod:`otcl.pipelines.sources`.

* :mod:`.config` -- :class:`Config` (data, model, loss, optim, train, eval) and dataset presets;
* :mod:`.trainer` -- :class:`SSLTrainer`, the :class:`otcl.pipelines.engine.trainer.EpochTrainer` of images;
* :mod:`.evaluate` -- kNN and linear probe of a run's frozen features;
* :mod:`.compare` -- losses x seeds -> table and plots;
* :mod:`.cli` -- the subcommands.
"""
