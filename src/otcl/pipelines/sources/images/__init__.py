"""Images for every pipeline: uint8 image tensors (one domain or several, and a four-style
stand-in) and batched on-device augmentations."""

from .augment import Augment, grayscale, hsv_to_rgb, rgb_to_hsv, to_float
from .datasets import DATASETS, STATS, DataError, ImageData, load_dataset, load_image_folder
from .domains import DomainData, load_domain_folder
from .styles import STYLES, save_domain_grids, style_domains

__all__ = [
    "Augment",
    "DATASETS",
    "DataError",
    "DomainData",
    "ImageData",
    "STATS",
    "STYLES",
    "grayscale",
    "hsv_to_rgb",
    "load_dataset",
    "load_domain_folder",
    "load_image_folder",
    "rgb_to_hsv",
    "save_domain_grids",
    "style_domains",
    "to_float",
]
