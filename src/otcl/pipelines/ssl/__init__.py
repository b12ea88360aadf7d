"""Self-supervised (SimCLR-style) image pipeline: ``otcl train``, ``otcl eval``, ``otcl compare``.

* :mod:`.config` -- :class:`Config` (data, model, loss, optim, train, eval) and dataset presets;
* :mod:`.data` -- datasets as uint8 tensors and batched on-device augmentations;
* :mod:`.models` -- ResNet-18 (CIFAR stem), small CNN, projection head;
* :mod:`.trainer` -- :class:`SSLTrainer`, the :class:`otcl.pipelines.engine.trainer.EpochTrainer` of images;
* :mod:`.features`, :mod:`.evaluate` -- frozen features, kNN and linear probe of a run;
* :mod:`.compare` -- losses x seeds -> table and plots;
* :mod:`.cli` -- the subcommands.
"""
