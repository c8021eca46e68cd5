"""Builds the miniImageNet tfds datasets (one per split) and prints their sizes.

  python experiments/build_miniimagenet.py --data_dir=$ROA_DATA_DIR

builds every split whose zip and CSV are in `<data_dir>/miniimagenet/` (val and test
there now; about 10 s per split on 2 cores) into `--tfds_dir`, and prints e.g.
`val: 9600 images, 16 classes, in ...`. A split already built is only read back.
"""

import os
import time

import common
from absl import flags, logging

from roa_jax import errors
from roa_jax.data import miniimagenet

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    os.environ.get("ROA_DATA_DIR"),
    "Folder with a miniimagenet/ subfolder. Default: env ROA_DATA_DIR.",
)
_TFDS_DIR = flags.DEFINE_string(
    "tfds_dir",
    None,
    "tfds data_dir to build in. Default: <ROA_CACHE_DIR or ~/.cache/roa_jax>/tfds.",
)
_SPLITS = flags.DEFINE_list(
    "splits",
    None,
    f"Splits to build, from {','.join(miniimagenet.SPLITS)}. Default: every split whose "
    "zip and CSV are present.",
)


def main(argv):
    del argv
    if not _DATA_DIR.value:
        raise errors.DataError(
            "--data_dir is not set and ROA_DATA_DIR is unset: point either at a folder "
            "with a miniimagenet/ subfolder."
        )
    splits = _SPLITS.value or miniimagenet.available_splits(_DATA_DIR.value)
    unknown = sorted(set(splits) - set(miniimagenet.SPLITS))
    if unknown:
        raise errors.ConfigError(f"--splits has {unknown}: use names from {miniimagenet.SPLITS}.")
    if not splits:
        logging.error(miniimagenet.MANUAL_DOWNLOAD_INSTRUCTIONS)
        raise errors.DataError(
            f"--data_dir={_DATA_DIR.value} has no miniImageNet split (zip and CSV in its "
            "miniimagenet/ subfolder; see the instructions above)."
        )
    start = time.perf_counter()
    builders = miniimagenet.build_tfds(_DATA_DIR.value, splits, _TFDS_DIR.value)
    for split, builder in builders.items():
        num_images = builder.info.splits[split].num_examples
        num_classes = builder.info.features["label"].num_classes
        print(f"{split}: {num_images} images, {num_classes} classes, in {builder.data_dir}")
    print(f"built or found {len(builders)} splits in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    common.run(main)
