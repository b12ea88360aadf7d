"""Images with domains and GCA's domain-block target plan: ``otcl domains train | eval | compare``.

* :mod:`.config` -- the settings (data with domains, model, ``target``: alpha, beta, scale);
* :mod:`.trainer` -- :class:`~.trainer.DomainTrainer`: two views per image, the loss called with
  ``target=domain_target(batch domains, alpha, beta)``;
* :mod:`.evaluate` -- class kNN and linear, domain kNN and linear, leave-one-domain-out probes;
* :mod:`.compare` -- the alpha - beta sweep's methods (``<loss>@<alpha-beta>``), table and plot;
* :mod:`.spec` -- the pipeline's :class:`~otcl.pipelines.spec.Pipeline`, registered as
  ``domains``.

The data come from :mod:`otcl.pipelines.sources.images` (``domains``: the
``<root>/<domain>/<class>/<image>`` layout; ``styles``: the four-style stand-in).
"""
