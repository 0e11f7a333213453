"""MONAI dictionary transform chains built from the config.

Preprocessing (shared by training, validation and inference) brings every case into network space:
channel-first (C, I, J, K) float32, oriented to ``transforms.orientation`` (RAS), resampled to
``transforms.spacing_mm``, intensity-normalised (CT: HU window clipped and scaled to [0, 1]; MR: per-channel
z-score over non-zero voxels) and cropped to the foreground. Every step is a MONAI invertible transform, and the
image carries its source grid in its metadata, so that :mod:`medpipe.inference.export` can put predictions back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai import transforms as mt
from monai.data import NibabelReader

from medpipe.config import PipelineConfig

#: Axis-code letters for RAS+ affines (nibabel's convention, which MetaTensors from medpipe carry).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class ThreadSafeNibabelReader(NibabelReader):  # type: ignore[misc]
    """MONAI's NibabelReader keeps the file names of the last ``read()`` on the instance for ``get_data()``.
    CacheDataset's caching threads share one instance, so a multi-file (multi-channel) case could be stacked
    with another case's name list and silently lose channels. The names are kept per thread here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._local = threading.local()
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def filenames(self) -> Any:
        return getattr(self._local, "filenames", ())

    @filenames.setter
    def filenames(self, value: Any) -> None:
        self._local.filenames = value

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers started with spawn pickle the dataset
        state = dict(self.__dict__)
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def foreground_ct(x: Any) -> Any:
    """Body mask for a windowed CT image scaled to [0, 1]: everything above the window's lower bound."""
    return x > 0.0


def foreground_nonzero(x: Any) -> Any:
    """Foreground for skull-stripped MR: non-zero voxels."""
    return x != 0


def intensity_transform(cfg: PipelineConfig, key: str = "image") -> mt.MapTransform:
    """CT window (clip to ``hu_window``, scale to [0, 1]) or MR per-channel non-zero z-score."""
    t = cfg.transforms
    if t.intensity == "ct_window":
        lo, hi = t.hu_window
        return mt.ScaleIntensityRanged(keys=key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    return mt.NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True)


def spatial_transforms(cfg: PipelineConfig, keys: Sequence[str]) -> list[mt.MapTransform]:
    """Orientation then spacing (in that order: resampling needs the oriented axes)."""
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    return [
        mt.Orientationd(keys=list(keys), axcodes=cfg.transforms.orientation, labels=RAS_LABELS),
        mt.Spacingd(keys=list(keys), pixdim=cfg.transforms.spacing_mm, mode=modes, padding_mode="border"),
    ]


def crop_transform(cfg: PipelineConfig, keys: Sequence[str]) -> list[mt.MapTransform]:
    """Foreground crop on the (normalised) image, if configured."""
    if not cfg.transforms.crop_foreground:
        return []
    select = foreground_ct if cfg.transforms.intensity == "ct_window" else foreground_nonzero
    return [mt.CropForegroundd(keys=list(keys), source_key="image", select_fn=select, margin=2, allow_smaller=True)]


def preprocess(cfg: PipelineConfig, with_label: bool, load: bool = True) -> mt.Compose:
    """Deterministic preprocessing. With ``load`` the chain starts from file paths (``image``, ``label``);
    without, from an in-memory channel-first MetaTensor under ``image`` carrying its affine."""
    keys = ["image", "label"] if with_label else ["image"]
    chain: list[Any] = []
    if load:
        chain += [
            mt.LoadImaged(keys=keys, reader=ThreadSafeNibabelReader, image_only=True, dtype=np.float32),
            mt.EnsureChannelFirstd(keys=keys),
        ]
    chain += spatial_transforms(cfg, keys)
    chain.append(intensity_transform(cfg))
    chain += crop_transform(cfg, keys)
    chain.append(mt.EnsureTyped(keys=keys, dtype=np.float32, track_meta=True))
    return mt.Compose(chain)


def augmentation(cfg: PipelineConfig, keys: Sequence[str] = ("image", "label")) -> list[mt.MapTransform]:
    """The standard spatial + intensity augmentation set (applied to patches, so it is cheap); ``keys``: the
    image and, for segmentation, its label map (resampled with nearest neighbours)."""
    t = cfg.transforms
    if not t.augment:
        return []
    keys = list(keys)
    modes = tuple("bilinear" if k == "image" else "nearest" for k in keys)
    spacing = np.asarray(t.spacing_mm)
    anisotropic = spacing.max() / spacing.min() > 2.0
    rot = (0.26, 0.26, 0.26) if not anisotropic else (0.0, 0.0, 0.26)
    return [
        mt.RandAffined(
            keys=keys, prob=max(t.rotate_prob, t.scale_prob), rotate_range=rot, scale_range=(0.15, 0.15, 0.15),
            mode=modes, padding_mode="zeros", cache_grid=True,
            spatial_size=t.patch_size_vox,
        ),
        *[mt.RandFlipd(keys=keys, prob=t.flip_prob, spatial_axis=axis) for axis in t.mirror_axes],
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=t.intensity_prob),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=t.intensity_prob),
        mt.RandGaussianNoised(keys="image", std=0.02, prob=t.intensity_prob / 2),
        mt.RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=t.intensity_prob / 2),
    ]


def train_transforms(cfg: PipelineConfig) -> mt.Compose:
    """Preprocessing, then class-balanced patch sampling (positive/negative) and augmentation."""
    t = cfg.transforms
    sampling = [
        mt.SpatialPadd(keys=["image", "label"], spatial_size=t.patch_size_vox, mode="constant"),
        mt.RandCropByPosNegLabeld(
            keys=["image", "label"], label_key="label", spatial_size=t.patch_size_vox,
            pos=t.pos_fraction, neg=1.0 - t.pos_fraction, num_samples=t.samples_per_case, image_key="image",
            image_threshold=0.0, allow_smaller=False,
        ),
    ]
    chain = [*preprocess(cfg, with_label=True).transforms, *sampling, *augmentation(cfg)]
    chain.append(mt.EnsureTyped(keys=["image", "label"], dtype=np.float32, track_meta=False))
    return mt.Compose(chain)


def val_transforms(cfg: PipelineConfig) -> mt.Compose:
    """Preprocessing for validation cases (whole volumes, scored by sliding-window inference)."""
    return preprocess(cfg, with_label=True)


def classification_preprocess(cfg: PipelineConfig, load: bool = True) -> mt.Compose:
    """``task: classification``: the whole volume at one fixed size. The image-only preprocessing (orientation,
    spacing, intensity, foreground crop), then centred padding (with 0, the normalised background) or cropping to
    ``transforms.patch_size_vox``."""
    return mt.Compose([*preprocess(cfg, with_label=False, load=load).transforms,
                       mt.ResizeWithPadOrCropd(keys="image", spatial_size=cfg.transforms.patch_size_vox,
                                               mode="constant")])


def classification_train_transforms(cfg: PipelineConfig) -> mt.Compose:
    """Whole-volume preprocessing (:func:`classification_preprocess`), then the same augmentation as segmentation
    (image only)."""
    chain = [*classification_preprocess(cfg).transforms, *augmentation(cfg, keys=("image",))]
    chain.append(mt.EnsureTyped(keys=["image"], dtype=np.float32, track_meta=False))
    return mt.Compose(chain)
