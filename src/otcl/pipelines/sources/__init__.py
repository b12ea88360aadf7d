"""What every pipeline shares, below all of them: data, backbones, features, probes, text.

* :mod:`.images` -- image datasets as uint8 tensors and batched on-device augmentations;
* :mod:`.backbones` -- ResNet-18 (CIFAR or ImageNet stem), small CNN, projection head;
* :mod:`.features` -- frozen features of an image encoder;
* :mod:`.probes` -- weighted kNN and the linear probe of frozen features.
* :mod:`.ratings`, :mod:`.movielens` -- ratings with contiguous ids and side features: CSV
  files, MovieLens 100K / 1M folders and their download;
* :mod:`.text` -- the word hasher and the optional sentence encoder;
* :mod:`.common` -- :class:`~.common.DataError` and the cache folder.

A pipeline (``ssl``, ``recsys``, ``multimodal``) imports from here and never from another
pipeline; nothing here imports a pipeline.
"""
