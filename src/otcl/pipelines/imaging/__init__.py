"""What the pipelines that train an image encoder on two augmented views share.

The self-supervised image pipeline (:mod:`otcl.pipelines.ssl`) and the domain pipeline
(:mod:`otcl.pipelines.domains`) train the same encoder (a backbone and a projection head) the
same way and probe its frozen backbone; each declares only what is its own (its data, its
target, its probes). No pipeline imports another, so their common part is here:

* :mod:`.config` -- the ``model`` section (:class:`~.config.ModelConfig`) and the checks of an
  ``eval`` section's kNN and linear-probe settings (no torch import);
* :mod:`.trainer` -- the encoder and the augmentation built from a config, their checks,
  :class:`~.trainer.TwoViewTrainer` (the engine's trainer of two views per image), a finished
  run rebuilt, and the frozen features an evaluation probes.
"""
