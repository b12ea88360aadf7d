"""What every pipeline shares, below all of them: data, backbones, features, probes.

* :mod:`.images` -- image datasets as uint8 tensors and batched on-device augmentations;
* :mod:`.backbones` -- ResNet-18 (CIFAR or ImageNet stem), small CNN, projection head;
* :mod:`.features` -- frozen features of an image encoder;
* :mod:`.probes` -- weighted kNN and the linear probe of frozen features.

A pipeline (``ssl``, ``recsys``, ``multimodal``) imports from here and never from another
pipeline; nothing here imports a pipeline.
"""
