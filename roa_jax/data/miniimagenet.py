"""miniImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) split.

The standard split is 64 train / 16 val / 20 test classes x 600 images of 84 x 84 RGB.
The ROA paper reports 64/12/24 classes; we use the standard 64/16/20 split instead, so
that results compare with the rest of the few-shot literature.

Source files, in `<data_dir>/miniimagenet/` (`data_dir`, else env `ROA_DATA_DIR`; the
README, "Data"):
  * `miniimagenet_<split>.zip` with entries `<split>/<wnid>/<filename>.jpg`;
  * `<split>.csv` with header `filename,label` (label = WordNet id, `wnid`).
Each split is independent: a split is usable as soon as its zip and CSV are present.

Two ways in:
  * `load_miniimagenet` decodes a split with PIL into a class array
    `[num_classes, 600, 84, 84, 3]` uint8, classes in sorted wnid order, images in
    sorted filename order, and caches it as `.npy` in `<cache_dir>` (`cache_dir`, else
    env `ROA_CACHE_DIR`, else `~/.cache/roa_jax`). Later loads read that one file and
    never import TensorFlow.
  * `MiniImagenet`, a tensorflow-datasets builder with one config per split
    (`mini_imagenet/train`, `mini_imagenet/val`, `mini_imagenet/test`), each holding the
    one split of its name. `build_tfds` prepares the configs whose files are present.

Both read the same index of a split (`_read_index`) and check every image with the same
decoder (`_decode_jpeg`), so they agree on what is valid; read the builder's images with
`decoders=accurate_decoders()` to get the pixels of `load_miniimagenet` exactly.
"""

import collections
import csv
import io
import json
import os
import pathlib
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image, UnidentifiedImageError

from roa_jax import errors
from roa_jax.data import paths

SPLITS = ("train", "val", "test")
IMAGE_SHAPE = (84, 84, 3)  # height, width, RGB
NUM_INSTANCES = 600  # images per class in every split

# WordNet ids of the Ravi & Larochelle split (the label column of train/val/test.csv).
WNIDS = {
    "train": tuple(
        """
        n01532829 n01558993 n01704323 n01749939 n01770081 n01843383 n01910747 n02074367
        n02089867 n02091831 n02101006 n02105505 n02108089 n02108551 n02108915 n02111277
        n02113712 n02120079 n02165456 n02457408 n02606052 n02687172 n02747177 n02795169
        n02823428 n02966193 n03017168 n03047690 n03062245 n03207743 n03220513 n03337140
        n03347037 n03400231 n03476684 n03527444 n03676483 n03838899 n03854065 n03888605
        n03908618 n03924679 n03998194 n04067472 n04243546 n04251144 n04258138 n04275548
        n04296562 n04389033 n04435653 n04443257 n04509417 n04515003 n04596742 n04604644
        n04612504 n06794110 n07584110 n07697537 n07747607 n09246464 n13054560 n13133613
        """.split()
    ),
    "val": tuple(
        """
        n01855672 n02091244 n02114548 n02138441 n02174001 n02950826 n02971356 n02981792
        n03075370 n03417042 n03535780 n03584254 n03770439 n03773504 n03980874 n09256479
        """.split()
    ),
    "test": tuple(
        """
        n01930112 n01981276 n02099601 n02110063 n02110341 n02116738 n02129165 n02219486
        n02443484 n02871525 n03127925 n03146219 n03272010 n03544143 n03775546 n04146614
        n04149813 n04418357 n04522168 n07613480
        """.split()
    ),
}

# Per-channel mean and std of `images / 255` for `episodes.sample_episode`: the standard
# ImageNet statistics (torchvision), not ones computed here. The train split, the only
# one that should set them, is not always present, and val/test must not.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
MEAN.flags.writeable = False
STD.flags.writeable = False

_SUBDIR = "miniimagenet"
_CACHE_FORMAT = 1  # bump when the decoding or layout of the cache changes

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put these files (Ravi & Larochelle split of miniImageNet) in the manual_dir:
`<data_dir>/{_SUBDIR}/` for `build_tfds`, `load_miniimagenet` and
`experiments/build_miniimagenet.py` (data_dir: --data_dir or env ROA_DATA_DIR);
`DownloadConfig(manual_dir=...)` or `<tfds data_dir>/downloads/manual/` for plain tfds.

  miniimagenet_train.zip   entries train/<wnid>/<filename>.jpg   64 classes x 600 images
  miniimagenet_val.zip     entries val/<wnid>/<filename>.jpg     16 classes x 600 images
  miniimagenet_test.zip    entries test/<wnid>/<filename>.jpg    20 classes x 600 images
  train.csv, val.csv, test.csv   header `filename,label`, one row per image, e.g.
                                 n0185567200000003.jpg,n01855672

Every image must be an 84x84 RGB JPEG. The CSVs are the split files of
github.com/jakesnell/prototypical-networks (data/miniImagenet/splits/ravi/). A split
needs only its own zip and CSV; the other splits may be added later.
"""


def _data_root(data_dir: str | os.PathLike | None) -> pathlib.Path:
    root = paths.data_root(data_dir)
    if root is None:
        raise errors.DataError(
            "ROA_DATA_DIR is not set: pass data_dir (or --data_dir), or set ROA_DATA_DIR, "
            f"to a folder whose {_SUBDIR}/ subfolder holds the miniImageNet zips and CSVs "
            "(README, 'Data')."
        )
    return root


def _check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise errors.ConfigError(f"Unknown miniImageNet split {split!r}: use one of {SPLITS}.")


def _split_files(mini_dir: pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    """`(zip, csv)` of a split; DataError naming the first one missing."""
    _check_split_name(split)
    zip_path = mini_dir / f"miniimagenet_{split}.zip"
    csv_path = mini_dir / f"{split}.csv"
    for path in (zip_path, csv_path):
        if not path.is_file():
            raise errors.DataError(
                f"miniImageNet {split!r} split: {path} not found. Put "
                f"miniimagenet_{split}.zip (entries {split}/<wnid>/<filename>.jpg) and "
                f"{split}.csv (header filename,label) in {mini_dir}, or leave the "
                f"{split!r} split out."
            )
    return zip_path, csv_path


def available_splits(data_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The splits whose zip and CSV are both in `<data_dir>/miniimagenet/`."""
    mini_dir = _data_root(data_dir) / _SUBDIR
    return tuple(
        split
        for split in SPLITS
        if (mini_dir / f"miniimagenet_{split}.zip").is_file()
        and (mini_dir / f"{split}.csv").is_file()
    )


def _read_index(zip_path: pathlib.Path, csv_path: pathlib.Path, split: str) -> list:
    """Checks a split's CSV against its zip; returns sorted `(wnid, filename)` rows.

    Raises:
      DataError: for a bad header, a label outside the split's classes, a duplicate
        filename, or a CSV filename that is not in the zip.
    """
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["filename", "label"]:
        raise errors.DataError(
            f"{csv_path}: the header is {rows[0] if rows else 'missing'}, expected "
            "`filename,label` (label = WordNet id)."
        )
    index = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[1] not in WNIDS[split]:
            raise errors.DataError(
                f"{csv_path}, line {line}: {row} is not `<filename>,<wnid>` with a wnid of "
                f"the {len(WNIDS[split])} {split!r} classes of the Ravi & Larochelle split."
            )
        index.append((row[1], row[0]))
    if not index:
        raise errors.DataError(f"{csv_path} lists no images: it should have one row per image.")
    if len({filename for _, filename in index}) != len(index):
        raise errors.DataError(
            f"{csv_path} lists some filenames more than once: remove duplicates."
        )
    with zipfile.ZipFile(zip_path) as zf:
        members = set(zf.namelist())
    missing = [f"{split}/{w}/{name}" for w, name in index if f"{split}/{w}/{name}" not in members]
    if missing:
        raise errors.DataError(
            f"{len(missing)} of the {len(index)} images listed in {csv_path} are not in "
            f"{zip_path}, e.g. {missing[:3]}: entries must be <split>/<wnid>/<filename>. "
            "Replace the zip or the CSV with matching ones."
        )
    return sorted(index)


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    """One 84 x 84 RGB JPEG -> `[84, 84, 3]` uint8; DataError naming `where` otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode != "RGB" or image.size != IMAGE_SHAPE[1::-1]:
                raise errors.DataError(
                    f"{where} is a {image.width}x{image.height} {image.mode} "
                    f"{image.format} image; miniImageNet images must be 84x84 RGB JPEGs. "
                    "Replace the zip with the standard 84x84 one."
                )
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise errors.DataError(
            f"{where} is not a readable JPEG ({error}): replace the zip."
        ) from error


def _iter_split(zip_path: pathlib.Path, index: list, split: str) -> Iterator:
    """Yields `(wnid, filename, jpeg_bytes, pixels)` in index order, each image checked."""
    with zipfile.ZipFile(zip_path) as zf:
        for wnid, filename in index:
            member = f"{split}/{wnid}/{filename}"
            data = zf.read(member)
            yield wnid, filename, data, _decode_jpeg(data, f"{zip_path}:{member}")


def _class_array(zip_path: pathlib.Path, csv_path: pathlib.Path, split: str) -> np.ndarray:
    """Decodes a split into `[num_classes, num_instances, 84, 84, 3]` uint8."""
    index = _read_index(zip_path, csv_path, split)
    counts = collections.Counter(wnid for wnid, _ in index)
    (usual, _), *_ = collections.Counter(counts.values()).most_common(1)
    odd = {wnid: n for wnid, n in counts.items() if n != usual}
    if odd:
        raise errors.DataError(
            f"{csv_path}: classes {odd} have other numbers of images than the {usual} of the "
            f"rest; a class array needs the same number in every class ({NUM_INSTANCES} as "
            "standard)."
        )
    images = np.empty((len(counts), len(index) // len(counts), *IMAGE_SHAPE), np.uint8)
    flat = images.reshape(-1, *IMAGE_SHAPE)  # index is sorted by (wnid, filename)
    for i, (_, _, _, pixels) in enumerate(_iter_split(zip_path, index, split)):
        flat[i] = pixels
    return images


def _source_signature(paths: Sequence[pathlib.Path]) -> dict:
    """Size and mtime of the source files: a cache built from other files is stale."""
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}


def _load_split(mini_dir: pathlib.Path, split: str, cache_root: pathlib.Path) -> np.ndarray:
    zip_path, csv_path = _split_files(mini_dir, split)
    stem = cache_root / f"miniimagenet_v{_CACHE_FORMAT}_{split}"
    npy_path, meta_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
    signature = {"split": split, "sources": _source_signature((zip_path, csv_path))}
    if meta_path.is_file() and npy_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta["signature"] == signature:
                images = np.load(npy_path)
                if list(images.shape) == meta["shape"] and images.dtype == np.uint8:
                    return images
        except (OSError, ValueError, KeyError) as error:  # unreadable: rebuild it
            logging.warning("miniImageNet: cannot read %s (%s).", npy_path, error)
        logging.info("miniImageNet: %s is stale or unreadable, rebuilding it.", npy_path)

    start = time.perf_counter()
    images = _class_array(zip_path, csv_path, split)
    # Write then rename, so a concurrent or interrupted run never sees half a file; the
    # .json is renamed last and vouches for the .npy.
    cache_root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_root, suffix=".npy", delete=False) as f:
        np.save(f, images)
    os.replace(f.name, npy_path)
    with tempfile.NamedTemporaryFile("w", dir=cache_root, suffix=".json", delete=False) as f:
        json.dump({"signature": signature, "shape": list(images.shape)}, f)
    os.replace(f.name, meta_path)
    logging.info(
        "miniImageNet: decoded %s %s into %s (%.1f s)",
        split,
        images.shape,
        npy_path,
        time.perf_counter() - start,
    )
    return images


def load_miniimagenet(
    data_dir: str | os.PathLike | None = None,
    splits: Sequence[str] = SPLITS,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """miniImageNet splits as class arrays, decoded once and then read from a cache.

    Args:
      data_dir: folder with a `miniimagenet/` subfolder;
        None: env `ROA_DATA_DIR`.
      splits: any of 'train', 'val', 'test'.
      cache_dir: where the decoded arrays are kept (`miniimagenet_v1_<split>.npy`, about
        0.2 GB per 10k images); None: env `ROA_CACHE_DIR`, else `~/.cache/roa_jax`.

    Returns:
      `{split: images}`, uint8 `[num_classes, num_instances, 84, 84, 3]`; `images[c, i]`
      is the i-th image (by filename) of the c-th wnid (sorted) of the CSV. For the
      standard files: `[C, 600, 84, 84, 3]` and class c is `WNIDS[split][c]`.

    Raises:
      ConfigError: for an unknown split.
      DataError: for an unset data_dir or invalid source files, and naming the zip or CSV
        of a requested split that is missing;
        checked for every requested split before anything is decoded.
    """
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    for split in splits:
        _check_split_name(split)
    mini_dir = _data_root(data_dir) / _SUBDIR
    for split in splits:
        _split_files(mini_dir, split)
    cache_root = paths.cache_root(cache_dir)
    return {split: _load_split(mini_dir, split, cache_root) for split in splits}


class MiniImagenet(tfds.core.GeneratorBasedBuilder):
    """miniImageNet, Ravi & Larochelle split; config `<split>` holds split `<split>`.

    Features: `image` (84, 84, 3) uint8, stored as the source JPEG bytes; `label` a
    ClassLabel over the split's sorted wnids (`WNIDS[split]`, so `int2str` gives the
    wnid); `filename` the source filename. Examples are stored in class array order
    (sorted wnid, then filename).

    TF's default JPEG decoder (INTEGER_FAST IDCT) differs from PIL by up to 22 levels on
    these images; `as_dataset(..., decoders=accurate_decoders())` matches PIL and
    `load_miniimagenet` exactly.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Ravi & Larochelle split, one config per split."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=split, description=f"The {split!r} split, {len(WNIDS[split])} classes."
        )
        for split in SPLITS
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="miniImageNet (Vinyals et al., 2016), Ravi & Larochelle (2017) split.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=WNIDS[self.builder_config.name]),
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep class array order
            homepage="https://github.com/jakesnell/prototypical-networks",
            citation="Ravi & Larochelle, Optimization as a Model for Few-Shot Learning, 2017.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        split = self.builder_config.name
        zip_path, csv_path = _split_files(pathlib.Path(dl_manager.manual_dir), split)
        # Check the whole index before the first image is written.
        index = _read_index(zip_path, csv_path, split)
        return {split: self._generate_examples(zip_path, index, split)}

    def _generate_examples(self, zip_path: pathlib.Path, index: list, split: str) -> Iterator:
        for wnid, filename, data, _ in _iter_split(zip_path, index, split):
            # The source bytes, not re-encoded: lossless and the size of the zip.
            yield filename, {"image": data, "label": wnid, "filename": filename}


def accurate_decoders() -> dict:
    """`decoders` for `MiniImagenet.as_dataset` that decode images exactly as PIL does."""
    import tensorflow as tf  # Only for reading the tfds build.

    @tfds.decode.make_decoder()
    def decode_accurate(serialized: tf.Tensor, feature) -> tf.Tensor:
        del feature  # the shape is known: every image was checked when building
        image = tf.io.decode_jpeg(serialized, channels=3, dct_method="INTEGER_ACCURATE")
        return tf.ensure_shape(image, IMAGE_SHAPE)

    return {"image": decode_accurate()}


def build_tfds(
    data_dir: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
    tfds_dir: str | os.PathLike | None = None,
) -> dict[str, MiniImagenet]:
    """Prepares the `mini_imagenet/<split>` tfds datasets (no-op for built ones).

    Args:
      data_dir: folder with a `miniimagenet/` subfolder;
        None: env `ROA_DATA_DIR`.
      splits: splits to build; None: every split whose zip and CSV are present.
      tfds_dir: tfds data_dir to build in; None: `<cache_dir>/tfds` with cache_dir env
        `ROA_CACHE_DIR`, else `~/.cache/roa_jax`.

    Returns:
      `{split: builder}`; read with `builder.as_dataset(split=split)`.

    Raises:
      DataError: naming the zip or CSV of a requested split that is missing (checked for
        all splits before building any), if no split is present, or for invalid source
        files.
      ConfigError: for an unknown split.
    """
    mini_dir = _data_root(data_dir) / _SUBDIR
    if splits is None:
        splits = available_splits(data_dir)
        if not splits:
            raise errors.DataError(
                f"No miniImageNet split in {mini_dir}: expected miniimagenet_<split>.zip "
                "and <split>.csv for at least one of train, val, test.\n"
                + MANUAL_DOWNLOAD_INSTRUCTIONS
            )
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    for split in splits:
        _split_files(mini_dir, split)
    tfds_root = pathlib.Path(tfds_dir).expanduser() if tfds_dir else paths.cache_root(None) / "tfds"
    builders = {}
    for split in splits:
        builder = MiniImagenet(config=split, data_dir=str(tfds_root))
        if not builder.is_prepared():
            start = time.perf_counter()
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=str(mini_dir), try_download_gcs=False
                )
            )
            logging.info(
                "miniImageNet: built tfds %s in %s (%.1f s)",
                split,
                builder.data_dir,
                time.perf_counter() - start,
            )
        builders[split] = builder
    return builders
