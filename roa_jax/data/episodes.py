"""N-way K-shot episodes drawn from a class array, in pure JAX.

A class array is `images[num_classes, num_instances, H, W, C]` (uint8, 0..255),
as returned by every loader in `roa_jax.data`. An episode picks `n_way` distinct
classes, and for each of them `k_shot + n_query` distinct instances; the first
`k_shot` go to the support set and the rest to the query set, so the two never
share an image.

The samplers are pure functions of `key` and static Python ints, so callers may
`jax.jit` them (with `n_way`, `k_shot`, `n_query` static) and `jax.vmap` them
over keys. Pass `images` to the jitted function as an argument holding a device
array (`jax.device_put(images)` once): a numpy argument is copied to the device on
every call, and a closed-over array is baked into the program as a constant.

Measured on 2 shared CPU cores (jax 0.10.2): 5-way 1-shot 15-query batches of 8 tasks
from Omniglot train (1150 classes) take ~1.2 ms per batch under jit, ~1 s to compile.
"""

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from roa_jax import errors


class Episode(NamedTuple):
    """One few-shot task; leading axes are `[num_tasks, ...]` when batched."""

    support_x: jax.Array  # [n_way * k_shot, H, W, C] float32
    support_y: jax.Array  # [n_way * k_shot] int32, labels 0..n_way-1
    query_x: jax.Array  # [n_way * n_query, H, W, C] float32
    query_y: jax.Array  # [n_way * n_query] int32, labels 0..n_way-1


def check_episode_config(
    num_classes: int,
    num_instances: int,
    n_way: int,
    k_shot: int,
    n_query: int,
    split: str | None = "train",
) -> None:
    """Raises a UserError (errors.py) if a split cannot supply the requested episodes.

    Binaries call this for every split at startup, before anything compiles.

    Args:
      num_classes: classes in the split's class array.
      num_instances: images per class in the split's class array.
      n_way: classes per episode.
      k_shot: support images per class.
      n_query: query images per class.
      split: name of the split, for the error message; None: an unnamed class array.

    Raises:
      ConfigError: if any of n_way, k_shot, n_query is < 1.
      DataError: if n_way > num_classes, or if k_shot + n_query > num_instances.
    """
    where = "the class array" if split is None else f"the {split!r} split"
    for flag, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise errors.ConfigError(
                f"config.{flag}={value!r} is invalid: it must be an integer >= 1 ({where} has "
                f"{num_classes} classes x {num_instances} instances)."
            )
    if n_way > num_classes:
        raise errors.DataError(
            f"config.n_way={n_way} is larger than the {num_classes} classes of {where}: use "
            f"1 <= n_way <= {num_classes}, or give {where} more classes."
        )
    if k_shot + n_query > num_instances:
        raise errors.DataError(
            f"config.k_shot={k_shot} plus config.n_query={n_query} needs {k_shot + n_query} "
            f"distinct images per class, but {where} has {num_instances}: lower k_shot or n_query "
            f"so that k_shot + n_query <= {num_instances}."
        )


def sample_episode(
    key: jax.Array,
    images: jax.Array,
    n_way: int,
    k_shot: int,
    n_query: int,
    mean: float | jax.Array = 0.0,
    std: float | jax.Array = 1.0,
) -> Episode:
    """Draws one episode from a class array.

    Classes are drawn without replacement, in random order; a class's label is its
    position in that draw, so labels are a uniformly random assignment of 0..n_way-1
    to the chosen classes. Support and query sets are ordered by label.

    Args:
      key: PRNG key.
      images: class array `[num_classes, num_instances, H, W, C]` uint8 (0..255).
      n_way: classes per episode (static).
      k_shot: support images per class (static).
      n_query: query images per class (static).
      mean: per-channel mean of `images / 255`, broadcastable to `[C]`.
      std: per-channel standard deviation of `images / 255`, broadcastable to `[C]`.

    Returns:
      An `Episode` with pixels `(images / 255 - mean) / std` as float32.

    Raises:
      ValueError: if `images` is not 5-D, or (a UserError) the split cannot supply the
        episode (see `check_episode_config`); raised when tracing, before any compilation.
    """
    if images.ndim != 5:
        raise ValueError(
            f"images must be a class array [num_classes, num_instances, H, W, C], "
            f"got shape {images.shape}."
        )
    num_classes, num_instances = images.shape[:2]
    check_episode_config(num_classes, num_instances, n_way, k_shot, n_query, split=None)
    # The indices of the largest i.i.d. uniform keys are a uniformly random ordered draw
    # without replacement: n_way classes, and k_shot + n_query instances per class. One
    # draw of keys compiles much faster than choice(replace=False) + permutation, and
    # top_k on float keys runs ~10x faster on CPU than a sort. top_k always returns
    # distinct indices; ties within the top k (probability ~ k^2 / 2^24) bias it negligibly.
    sort_keys = jax.random.uniform(key, (num_classes + n_way * num_instances,))
    _, classes = jax.lax.top_k(sort_keys[:num_classes], n_way)
    instance_keys = sort_keys[num_classes:].reshape(n_way, num_instances)
    _, instances = jax.lax.top_k(instance_keys, k_shot + n_query)

    x = jnp.asarray(images)[classes[:, None], instances]  # [n_way, k + q, H, W, C]
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    x = (x.astype(jnp.float32) / 255.0 - mean) / std
    image_shape = x.shape[2:]
    labels = jnp.arange(n_way, dtype=jnp.int32)
    return Episode(
        support_x=x[:, :k_shot].reshape((n_way * k_shot, *image_shape)),
        support_y=jnp.repeat(labels, k_shot),
        query_x=x[:, k_shot:].reshape((n_way * n_query, *image_shape)),
        query_y=jnp.repeat(labels, n_query),
    )


def sample_episodes(
    key: jax.Array,
    images: jax.Array,
    num_tasks: int,
    n_way: int,
    k_shot: int,
    n_query: int,
    mean: float | jax.Array = 0.0,
    std: float | jax.Array = 1.0,
) -> Episode:
    """Draws `num_tasks` episodes, one per key of `jax.random.split(key, num_tasks)`.

    Equal to stacking `sample_episode(k, images, ...)` over those keys.

    Args:
      key: PRNG key.
      images: class array `[num_classes, num_instances, H, W, C]` uint8.
      num_tasks: number of episodes (static).
      n_way: classes per episode (static).
      k_shot: support images per class (static).
      n_query: query images per class (static).
      mean: per-channel mean of `images / 255`, broadcastable to `[C]`.
      std: per-channel standard deviation of `images / 255`, broadcastable to `[C]`.

    Returns:
      An `Episode` whose fields have a leading `[num_tasks]` axis.
    """
    if not isinstance(num_tasks, numbers.Integral) or num_tasks < 1:
        raise errors.ConfigError(f"num_tasks={num_tasks!r} is invalid: it must be an integer >= 1.")
    keys = jax.random.split(key, num_tasks)
    return jax.vmap(lambda k: sample_episode(k, images, n_way, k_shot, n_query, mean, std))(keys)
