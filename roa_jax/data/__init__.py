"""Few-shot data: class arrays per split, and episodes sampled from them in JAX.

A loader returns `{'train', 'val', 'test'}` -> class array
`[num_classes, num_instances, H, W, C]` uint8; `sample_episode(s)` turns a class array
into N-way K-shot tasks.
"""

from roa_jax.data.episodes import Episode, check_episode_config, sample_episode, sample_episodes
from roa_jax.data.omniglot import load_omniglot
from roa_jax.data.synthetic import load_synthetic, synthetic_classes

__all__ = [
    "Episode",
    "check_episode_config",
    "load_omniglot",
    "load_synthetic",
    "sample_episode",
    "sample_episodes",
    "synthetic_classes",
]
