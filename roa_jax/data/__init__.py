"""Few-shot data: class arrays per split, and episodes sampled from them in JAX.

A loader returns `{'train', 'val', 'test'}` -> class array
`[num_classes, num_instances, H, W, C]` uint8; `sample_episode(s)` turns a class array
into N-way K-shot tasks. `load_splits` is the one place that picks the loader of a config's
dataset, and `check_splits` checks the splits can supply its episodes.
"""

from roa_jax import errors
from roa_jax.data import paths
from roa_jax.data.episodes import Episode, check_episode_config, sample_episode, sample_episodes
from roa_jax.data.omniglot import load_omniglot
from roa_jax.data.synthetic import load_synthetic, synthetic_classes

__all__ = [
    "Episode",
    "check_episode_config",
    "check_splits",
    "load_omniglot",
    "load_splits",
    "load_synthetic",
    "sample_episode",
    "sample_episodes",
    "synthetic_classes",
]


def load_splits(cfg, data_dir=None, cache_dir=None):
    """({'train', 'val', 'test'} -> uint8 class array, per-channel (mean, std)) of `cfg`.

    Args:
      cfg: a `config.Config` (its dataset, image_size, seed and rotations are read).
      data_dir: dataset root (else env ROA_DATA_DIR, else a tfds download).
      cache_dir: cache of preprocessed arrays (else env ROA_CACHE_DIR, else ~/.cache/roa_jax).
    """
    paths.data_root(data_dir)  # a named folder that does not exist is an error for any dataset
    if cfg.dataset == "omniglot":
        splits = load_omniglot(
            data_dir, cfg.image_size, seed=cfg.seed, rotations=cfg.rotations, cache_dir=cache_dir
        )
        return splits, (0.0, 1.0)
    if cfg.dataset == "synthetic":
        return load_synthetic(seed=cfg.seed, image_size=cfg.image_size), (0.0, 1.0)
    from roa_jax.data import miniimagenet

    splits = miniimagenet.load_miniimagenet(data_dir, cache_dir=cache_dir)
    return splits, (miniimagenet.MEAN, miniimagenet.STD)


def check_splits(cfg, splits: dict) -> None:
    """Every split can supply `cfg`'s episodes, and its images have `cfg.image_size`."""
    for split, images in splits.items():
        num_classes, num_instances, height, width, _ = images.shape
        check_episode_config(num_classes, num_instances, cfg.n_way, cfg.k_shot, cfg.n_query, split)
        if (height, width) != (cfg.image_size, cfg.image_size):
            raise errors.DataError(
                f"config.image_size={cfg.image_size} does not match the {split!r} images "
                f"({height}x{width})."
            )
