"""Omniglot (Lake et al., 2015) as class arrays, through tensorflow-datasets.

All 1623 characters (964 of `images_background` + 659 of `images_evaluation`, 20
drawers each) are pooled, shuffled with one seed and split 1150/50/423 into
train/val/test classes, as in MAML (Finn et al., 2017) and ROA.

Where the data comes from:
  * `data_dir` (or env `ROA_DATA_DIR`) set: the TFDS `omniglot` dataset is built
    offline from the zips in `<data_dir>/omniglot/`, whose `checksums.tsv` replaces the
    checksums registered in tfds (the zips there are rebuilt, same pixels, other bytes).
  * neither set: `tfds.load('omniglot')` downloads the official zips.

Preprocessing: grayscale, inverted so that strokes are 255 on a 0 background, resized
from 105 x 105 to `image_size` with Lanczos (anti-aliased) resampling, uint8. The
preprocessed 1623-class array is cached as `<cache_dir>/omniglot_v1_<size>px.npz`
(`cache_dir`, else env `ROA_CACHE_DIR`, else `~/.cache/roa_jax`; the offline tfds build
goes to `<cache_dir>/tfds`). Once cached, loads read that one file (well under a second),
never import TensorFlow and do not look at `data_dir`.
"""

import os
import pathlib
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image

from roa_jax import errors
from roa_jax.data import paths

NUM_CLASSES = 1623  # 964 background + 659 evaluation characters
NUM_INSTANCES = 20  # drawers per character
SOURCE_SIZE = 105  # px, height and width of the source images
SPLIT_SIZES = (1150, 50, 423)  # train / val / test classes, as in MAML
_TFDS_SPLITS = ("train", "test")  # images_background, images_evaluation; small1/2 are subsets
_ZIP_FILES = ("images_background.zip", "images_evaluation.zip")
_CACHE_FORMAT = 1  # bump when the preprocessing changes, to ignore stale caches


def _check_omniglot_dir(omniglot_dir: pathlib.Path) -> None:
    """Raises DataError naming the first missing input of the offline build."""
    for name in ("checksums.tsv", *_ZIP_FILES):
        path = omniglot_dir / name
        if not path.is_file():
            raise errors.DataError(
                f"Omniglot file not found: {path}. Set ROA_DATA_DIR (or pass --data_dir) to "
                "a folder whose omniglot/ subfolder holds checksums.tsv, "
                "images_background.zip and images_evaluation.zip, "
                "or unset both to download through tfds."
            )


def _preprocess(image: np.ndarray, image_size: int) -> np.ndarray:
    """Source images `[N, 105, 105]` (strokes 0, background 255) -> `[N, S, S]`, strokes 255."""
    # Inverted, "no ink" is 0: it matches the zero padding of conv layers and the usual
    # MAML preprocessing.
    inverted = 255 - image
    if image_size == SOURCE_SIZE:
        return inverted
    return np.stack(
        [
            np.asarray(Image.fromarray(x).resize((image_size, image_size), Image.LANCZOS))
            for x in inverted
        ]
    )


def group_by_class(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Stacks images `[N, H, W]` by their class label into `[1623, 20, H, W, 1]`.

    Within a class, images keep their input order.

    Raises:
      DataError: unless labels cover 0..1622 with exactly 20 images each.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=NUM_CLASSES) if labels.size else np.zeros(0, int)
    if counts.shape != (NUM_CLASSES,) or np.any(counts != NUM_INSTANCES):
        bad = np.flatnonzero(counts != NUM_INSTANCES)[:5]
        raise errors.DataError(
            f"Omniglot should have {NUM_CLASSES} classes x {NUM_INSTANCES} images, got "
            f"{labels.size} images and wrong counts for classes {bad.tolist()} "
            f"({counts[bad].tolist()} images). The tfds build is incomplete or from other "
            "data: delete it (and the roa_jax cache) and rebuild."
        )
    order = np.argsort(labels, kind="stable")
    return images[order].reshape(NUM_CLASSES, NUM_INSTANCES, *images.shape[1:], 1)


def _tfds_splits(data_root: pathlib.Path | None, cache_root: pathlib.Path) -> list:
    """The tf.data datasets of the tfds train and test splits, images left encoded."""
    import tensorflow_datasets as tfds  # Heavy (TensorFlow): only when building the cache.

    tfds.disable_progress_bar()  # its bars would fill a log with ~10^5 lines; we log the build
    decoders = {"image": tfds.decode.SkipDecoding()}
    if data_root is None:
        logging.info("Omniglot: ROA_DATA_DIR is not set, downloading through tfds.load.")
        try:
            return tfds.load("omniglot", split=list(_TFDS_SPLITS), decoders=decoders)
        except Exception as e:  # noqa: BLE001 - requests, tfds and TF raise many types
            raise errors.DataError(
                f"Omniglot download through tfds failed ({type(e).__name__}: {str(e)[:200]}). "
                "Offline, set ROA_DATA_DIR (or pass --data_dir) to a folder whose omniglot/ "
                "subfolder holds checksums.tsv, images_background.zip and "
                "images_evaluation.zip."
            ) from None

    from tensorflow_datasets.core.download import checksums as checksums_lib
    from tensorflow_datasets.image_classification import omniglot as omniglot_lib

    omniglot_dir = data_root / "omniglot"

    class LocalOmniglot(omniglot_lib.Omniglot, skip_registration=True):
        # The local zips are rebuilt (same pixels, other bytes than the official ones),
        # so their checksums come from the data folder, not from the tfds package.
        name = "omniglot"
        url_infos = checksums_lib.load_url_infos(omniglot_dir / "checksums.tsv")

    builder = LocalOmniglot(data_dir=str(cache_root / "tfds"))
    if not builder.is_prepared():
        logging.info(
            "Omniglot: building tfds dataset from %s in %s", omniglot_dir, builder.data_dir
        )
        start = time.perf_counter()
        cache_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_root) as download_dir:
            builder.download_and_prepare(
                download_dir=download_dir,
                download_config=tfds.download.DownloadConfig(
                    manual_dir=str(omniglot_dir), try_download_gcs=False
                ),
            )
        logging.info("Omniglot: tfds build took %.1f s", time.perf_counter() - start)
    return [builder.as_dataset(split=split, decoders=decoders) for split in _TFDS_SPLITS]


def _build_class_array(
    data_root: pathlib.Path | None, cache_root: pathlib.Path, image_size: int
) -> np.ndarray:
    """Reads train + test of tfds omniglot into the `[1623, 20, S, S, 1]` class array."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def decode(example):
        # tfds declares 3 channels; the source PNGs are grayscale, so decode just one.
        return tf.io.decode_png(example["image"], channels=1)[..., 0], example["label"]

    images, labels = [], []
    for split, dataset in zip(_TFDS_SPLITS, _tfds_splits(data_root, cache_root), strict=True):
        dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
        for batch_images, batch_labels in tfds.as_numpy(dataset):
            images.append(_preprocess(batch_images, image_size))
            labels.append(batch_labels)
        logging.info("Omniglot: preprocessed split %r, %d images", split, sum(map(len, labels)))
    return group_by_class(np.concatenate(images), np.concatenate(labels))


def omniglot_classes(
    data_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """All 1623 Omniglot classes, unshuffled, as a cached class array.

    Args:
      data_dir: folder with an `omniglot/` subfolder;
        None: env `ROA_DATA_DIR`; unset too: download through tfds.
      image_size: height and width in pixels, 1..105.
      cache_dir: where the tfds build and the preprocessed arrays are kept; None: env
        `ROA_CACHE_DIR`, else `~/.cache/roa_jax`.

    Returns:
      Class array `[1623, 20, image_size, image_size, 1]` uint8, ordered by tfds label
      (the global character id - 1).
    """
    if int(image_size) != image_size or not 1 <= image_size <= SOURCE_SIZE:
        raise errors.ConfigError(
            f"image_size={image_size!r} is out of range: use an integer in 1..{SOURCE_SIZE} "
            "(Omniglot images are 105 x 105; 28 is the usual size)."
        )
    data_root = paths.data_root(data_dir)
    cache_root = paths.cache_root(cache_dir)
    cache_file = cache_root / f"omniglot_v{_CACHE_FORMAT}_{image_size}px.npz"
    shape = (NUM_CLASSES, NUM_INSTANCES, image_size, image_size, 1)
    if cache_file.is_file():
        with np.load(cache_file) as cached:
            images = cached["images"]
        if images.shape == shape and images.dtype == np.uint8:
            return images
        logging.warning("Omniglot: ignoring %s with shape %s", cache_file, images.shape)

    if data_root is not None:
        _check_omniglot_dir(data_root / "omniglot")
    start = time.perf_counter()
    images = _build_class_array(data_root, cache_root, image_size)
    # Write then rename, so a concurrent or interrupted run never sees half a file.
    cache_root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_root, suffix=".npz", delete=False) as f:
        np.savez(f, images=images)
    os.replace(f.name, cache_file)
    logging.info(
        "Omniglot: cached %s in %s (%.1f s)", shape, cache_file, time.perf_counter() - start
    )
    return images


def _rotate_classes(images: np.ndarray) -> np.ndarray:
    """Appends each class rotated by 90, 180 and 270 degrees as 3 new classes."""
    return np.concatenate([np.rot90(images, k, axes=(2, 3)) for k in range(4)], axis=0)


def load_omniglot(
    data_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    seed: int = 0,
    split_sizes: Sequence[int] = SPLIT_SIZES,
    rotations: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Omniglot split into disjoint train/val/test classes.

    Args:
      data_dir: folder with an `omniglot/` subfolder;
        None: env `ROA_DATA_DIR`; unset too: download through tfds.
      image_size: height and width in pixels, 1..105.
      seed: seed of the class shuffle; the same seed gives the same splits.
      split_sizes: number of (train, val, test) classes, each >= 1, sum <= 1623.
      rotations: if True, every train class is also rotated by 90, 180 and 270 degrees
        into 3 new classes (4x train classes; MAML++ augmentation); val/test unchanged.
      cache_dir: where the tfds build and the preprocessed arrays are kept; None: env
        `ROA_CACHE_DIR`, else `~/.cache/roa_jax`.

    Returns:
      `{'train', 'val', 'test'}` -> class array `[C, 20, image_size, image_size, 1]`
      uint8, strokes 255 on a 0 background.

    Raises:
      ConfigError: for a bad `split_sizes` or `image_size`.
      DataError: if a file of `<data_dir>/omniglot/` is needed and missing.
    """
    split_sizes = tuple(split_sizes)
    if (
        len(split_sizes) != 3
        or any(int(n) != n or n < 1 for n in split_sizes)
        or sum(split_sizes) > NUM_CLASSES
    ):
        raise errors.ConfigError(
            f"split_sizes={split_sizes!r} is invalid: it must be 3 integers >= 1, the "
            f"number of (train, val, test) classes, summing to at most {NUM_CLASSES} "
            f"(default {SPLIT_SIZES})."
        )
    images = omniglot_classes(data_dir, image_size, cache_dir)
    order = np.random.default_rng(seed).permutation(NUM_CLASSES)
    ends = np.cumsum(split_sizes)
    splits = dict(
        zip(("train", "val", "test"), np.split(order[: ends[-1]], ends[:-1]), strict=True)
    )
    splits = {name: images[classes] for name, classes in splits.items()}
    if rotations:
        splits["train"] = _rotate_classes(splits["train"])
    return splits
