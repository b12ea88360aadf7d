"""Images for every pipeline: uint8 image tensors and batched on-device augmentations."""

from .augment import Augment, grayscale, hsv_to_rgb, rgb_to_hsv, to_float
from .datasets import DATASETS, STATS, DataError, ImageData, load_dataset, load_image_folder

__all__ = [
    "Augment",
    "DATASETS",
    "DataError",
    "ImageData",
    "STATS",
    "grayscale",
    "hsv_to_rgb",
    "load_dataset",
    "load_image_folder",
    "rgb_to_hsv",
    "to_float",
]
