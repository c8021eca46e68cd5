"""Tests of roa_jax.data: episode sampling, synthetic classes and Omniglot.

The Omniglot tests need the raw data: set ROA_DATA_DIR to a folder holding omniglot/.
They build the tfds dataset once into a temporary cache (about a minute).
"""

import hashlib
import os
import re
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from roa_jax import errors
from roa_jax.data import episodes, omniglot, synthetic

NUM_CLASSES, NUM_INSTANCES = 30, 20


def id_images(num_classes=NUM_CLASSES, num_instances=NUM_INSTANCES):
    """Class array whose pixels encode (class, instance): channel 0 = class, 1 = instance."""
    ids = np.stack(
        np.meshgrid(np.arange(num_classes), np.arange(num_instances), indexing="ij"), axis=-1
    )  # [classes, instances, 2]
    shape = (num_classes, num_instances, 3, 2, 2)
    return np.broadcast_to(ids[:, :, None, None, :], shape).astype(np.uint8)


def decode_ids(x):
    """Episode pixels (mean 0, std 1) -> int [N, 2] of (class, instance)."""
    return np.rint(np.asarray(x)[:, 0, 0, :] * 255).astype(int)


def nearest_neighbour_accuracy(episode):
    """Mean accuracy of labelling each query image like its nearest support image."""
    flat = lambda x: x.reshape(*x.shape[:2], -1)
    support, query = flat(episode.support_x), flat(episode.query_x)
    # Squared distance minus |query|^2, which does not change the argmin: [T, Q, S].
    dist = jnp.sum(support**2, axis=-1)[:, None] - 2 * jnp.einsum("tqd,tsd->tqs", query, support)
    pred = jnp.take_along_axis(episode.support_y, jnp.argmin(dist, axis=-1), axis=-1)
    return float(jnp.mean(pred == episode.query_y))


# Compiled once per configuration and shared by the tests (XLA compiles are slow here).
sample_jit = jax.jit(episodes.sample_episode, static_argnums=(2, 3, 4))
sample_batch_jit = jax.jit(episodes.sample_episodes, static_argnums=(2, 3, 4, 5))


class EpisodeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((5, 1, 15), (30, 10, 10))
    def test_shapes_labels_and_sources(self, n_way, k_shot, n_query):
        sample = self.variant(episodes.sample_episode, static_argnums=(2, 3, 4))
        images = jnp.asarray(id_images())
        for seed in range(3):
            ep = sample(jax.random.key(seed), images, n_way, k_shot, n_query)
            chex.assert_shape(ep.support_x, (n_way * k_shot, 3, 2, 2))
            chex.assert_shape(ep.query_x, (n_way * n_query, 3, 2, 2))
            chex.assert_type([ep.support_x, ep.query_x], jnp.float32)
            chex.assert_type([ep.support_y, ep.query_y], jnp.int32)
            np.testing.assert_array_equal(np.bincount(ep.support_y, minlength=n_way), k_shot)
            np.testing.assert_array_equal(np.bincount(ep.query_y, minlength=n_way), n_query)

            labels = np.concatenate([ep.support_y, ep.query_y])
            ids = np.concatenate([decode_ids(ep.support_x), decode_ids(ep.query_x)])
            # Each label is one source class, and the n_way classes are distinct.
            source = {label: set(ids[labels == label, 0]) for label in range(n_way)}
            self.assertTrue(all(len(c) == 1 for c in source.values()), source)
            self.assertLen(set.union(*source.values()), n_way)
            # No image is used twice, so support and query are disjoint.
            self.assertLen({tuple(i) for i in ids}, len(ids))

    def test_same_key_same_episode_other_key_other_episode(self):
        images = jnp.asarray(id_images())
        sample = lambda seed: sample_jit(jax.random.key(seed), images, 5, 1, 15)
        chex.assert_trees_all_equal(sample(3), sample(3))
        first = decode_ids(sample(3).support_x)
        for seed in range(4, 9):
            self.assertFalse(np.array_equal(first, decode_ids(sample(seed).support_x)))

    def test_jit_equals_no_jit_and_traces_once(self):
        images = jnp.asarray(id_images())

        @jax.jit
        @chex.assert_max_traces(n=1)
        def sample_fixed_config(key):
            return episodes.sample_episodes(key, images, 4, 5, 1, 15)

        for seed in range(3):
            sample_fixed_config(jax.random.key(seed))
        key = jax.random.key(3)
        chex.assert_trees_all_equal(
            sample_fixed_config(key), episodes.sample_episodes(key, images, 4, 5, 1, 15)
        )

    def test_sample_episodes_equals_stacked_sample_episode(self):
        images = jnp.asarray(id_images())
        key = jax.random.key(7)
        batch = sample_batch_jit(key, images, 6, 5, 1, 15, 0.1, 0.5)
        stacked = [sample_jit(k, images, 5, 1, 15, 0.1, 0.5) for k in jax.random.split(key, 6)]
        chex.assert_trees_all_close(batch, jax.tree.map(lambda *x: jnp.stack(x), *stacked))
        chex.assert_shape(batch.query_x, (6, 75, 3, 2, 2))

    def test_normalisation_per_channel(self):
        images = np.full((30, 20, 3, 2, 2), 51, np.uint8)  # 51 / 255 = 0.2
        mean, std = np.array([0.1, 0.2]), np.array([0.5, 2.0])
        ep = sample_jit(jax.random.key(0), images, 5, 1, 15, mean, std)
        np.testing.assert_allclose(
            ep.query_x, np.broadcast_to((0.2 - mean) / std, ep.query_x.shape), atol=1e-6
        )

    def test_classes_instances_and_labels_are_uniform(self):
        images = jnp.asarray(id_images())
        ep = sample_batch_jit(jax.random.key(0), images, 3000, 5, 1, 15)
        ids = decode_ids(ep.support_x.reshape(-1, 3, 2, 2))
        # 3000 * 5 / 30 = 500 draws per class, 750 per instance; +-25% is > 5 sigma.
        class_counts = np.bincount(ids[:, 0], minlength=NUM_CLASSES)
        instance_counts = np.bincount(ids[:, 1], minlength=NUM_INSTANCES)
        np.testing.assert_array_less(np.abs(class_counts - 500), 125)
        np.testing.assert_array_less(np.abs(instance_counts - 750), 187)
        # Labels are a random assignment: the lowest class id gets each label equally often.
        lowest = ids[:, 0].reshape(3000, 5).argmin(axis=1)
        np.testing.assert_array_less(np.abs(np.bincount(lowest, minlength=5) - 600), 150)

    @parameterized.parameters(
        (31, 1, 1, "n_way"),
        (5, 10, 11, "k_shot"),
        (5, 20, 1, "n_query"),
        (0, 1, 1, "n_way"),
        (5, 0, 1, "k_shot"),
        (5, 1, 0, "n_query"),
    )
    def test_check_episode_config_names_the_flag(self, n_way, k_shot, n_query, flag):
        with self.assertRaisesRegex(ValueError, f"config.{flag}=.*'val'"):
            episodes.check_episode_config(30, 20, n_way, k_shot, n_query, split="val")
        # The sampler checks too, when tracing, before anything compiles.
        with self.assertRaisesRegex(ValueError, f"config.{flag}="):
            jax.jit(episodes.sample_episode, static_argnums=(2, 3, 4))(
                jax.random.key(0), id_images(), n_way, k_shot, n_query
            )

    def test_check_episode_config_accepts_the_limits(self):
        episodes.check_episode_config(30, 20, 30, 10, 10)


class SyntheticTest(parameterized.TestCase):
    def test_deterministic_in_seed(self):
        a = synthetic.synthetic_classes(0, 10)
        np.testing.assert_array_equal(a, synthetic.synthetic_classes(0, 10))
        self.assertFalse(np.array_equal(a, synthetic.synthetic_classes(1, 10)))

    @parameterized.parameters((28, 1), (32, 3))
    def test_shapes(self, image_size, channels):
        images = synthetic.synthetic_classes(0, 7, 5, image_size, channels)
        chex.assert_shape(images, (7, 5, image_size, image_size, channels))
        self.assertEqual(images.dtype, np.uint8)
        self.assertLess(images.mean(), 128)  # bright strokes on a dark background

    def test_load_synthetic_splits(self):
        splits = synthetic.load_synthetic(seed=3, split_sizes=(20, 5, 6))
        self.assertEqual(
            {k: v.shape for k, v in splits.items()},
            {
                "train": (20, 20, 28, 28, 1),
                "val": (5, 20, 28, 28, 1),
                "test": (6, 20, 28, 28, 1),
            },
        )
        with self.assertRaisesRegex(ValueError, "split_sizes"):
            synthetic.load_synthetic(split_sizes=(20, 0, 6))

    def test_few_shot_learnable_but_not_trivial(self):
        images = jnp.asarray(synthetic.synthetic_classes(0, 100))
        key = jax.random.key(0)
        one_shot = nearest_neighbour_accuracy(sample_batch_jit(key, images, 200, 5, 1, 15))
        five_shot = nearest_neighbour_accuracy(sample_batch_jit(key, images, 200, 5, 5, 15))
        self.assertBetween(one_shot, 0.4, 0.95)
        self.assertGreater(five_shot, one_shot + 0.05)  # more shots help: classes are coherent


def test_group_by_class():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(1623), 20))
    grouped = omniglot.group_by_class(labels[:, None, None], labels)
    chex.assert_shape(grouped, (1623, 20, 1, 1, 1))
    np.testing.assert_array_equal(
        grouped[:, :, 0, 0, 0], np.repeat(np.arange(1623)[:, None], 20, 1)
    )
    with pytest.raises(ValueError, match="1623 classes x 20"):
        omniglot.group_by_class(labels[:-1, None, None], labels[:-1])


def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(errors.DataError, match=f"--data_dir={re.escape(str(missing))}: no such"):
        omniglot.load_omniglot(data_dir=missing, cache_dir=tmp_path / "cache")
    # A data folder without omniglot/ in it: the message names the file it looked for.
    missing.mkdir()
    expected = re.escape(str(missing / "omniglot" / "checksums.tsv"))
    with pytest.raises(errors.DataError, match=f"{expected}.*ROA_DATA_DIR"):
        omniglot.load_omniglot(data_dir=missing, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("split_sizes", [(1150, 50, 424), (1150, 50), (1150, 0, 423)])
def test_omniglot_bad_split_sizes(split_sizes):
    with pytest.raises(ValueError, match="split_sizes=.*1623"):
        omniglot.load_omniglot(split_sizes=split_sizes)


def test_omniglot_bad_image_size():
    with pytest.raises(ValueError, match="image_size=0 .*1..105"):
        omniglot.load_omniglot(image_size=0)


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory):
    if not os.environ.get("ROA_DATA_DIR"):
        pytest.skip(
            "set ROA_DATA_DIR to a folder holding omniglot/ to test the real Omniglot loader."
        )
    cache_dir = tmp_path_factory.mktemp("roa_cache")
    omniglot.load_omniglot(cache_dir=cache_dir)  # builds tfds and the .npz, once
    return cache_dir


def class_hashes(images):
    return {hashlib.sha1(c.tobytes()).hexdigest() for c in images}


def test_omniglot_splits(omniglot_cache):
    start = time.perf_counter()
    splits = omniglot.load_omniglot(cache_dir=omniglot_cache)
    assert time.perf_counter() - start < 5.0, "the cached load should not rebuild"
    assert {k: (v.shape, v.dtype) for k, v in splits.items()} == {
        "train": ((1150, 20, 28, 28, 1), np.uint8),
        "val": ((50, 20, 28, 28, 1), np.uint8),
        "test": ((423, 20, 28, 28, 1), np.uint8),
    }
    for images in splits.values():
        assert images.mean() < 128 and images.max() == 255  # bright strokes, dark background
        assert np.median(images) == 0
    train, val, test = (class_hashes(splits[k]) for k in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == 1623
    assert not (train & val or train & test or val & test)


def test_omniglot_seed(omniglot_cache):
    a = omniglot.load_omniglot(cache_dir=omniglot_cache, seed=0)
    b = omniglot.load_omniglot(cache_dir=omniglot_cache, seed=0)
    c = omniglot.load_omniglot(cache_dir=omniglot_cache, seed=1)
    chex.assert_trees_all_equal(a, b)
    assert class_hashes(a["test"]) != class_hashes(c["test"])
    assert class_hashes(np.concatenate(list(a.values()))) == class_hashes(
        np.concatenate(list(c.values()))
    )


def test_omniglot_rotations(omniglot_cache):
    plain = omniglot.load_omniglot(cache_dir=omniglot_cache)
    rotated = omniglot.load_omniglot(cache_dir=omniglot_cache, rotations=True)
    chex.assert_shape(rotated["train"], (4600, 20, 28, 28, 1))
    np.testing.assert_array_equal(rotated["train"][:1150], plain["train"])
    np.testing.assert_array_equal(rotated["train"][1150:2300], np.rot90(plain["train"], 1, (2, 3)))
    chex.assert_trees_all_equal(
        {k: rotated[k] for k in ("val", "test")}, {k: plain[k] for k in ("val", "test")}
    )


def test_omniglot_instances_of_a_class_are_alike(omniglot_cache):
    # Raw-pixel 1-NN scores about 0.44 at 5-way 1-shot; were the grouping by label
    # wrong, it would be at chance (0.2).
    test = jnp.asarray(omniglot.load_omniglot(cache_dir=omniglot_cache)["test"])
    accuracy = nearest_neighbour_accuracy(sample_batch_jit(jax.random.key(0), test, 200, 5, 1, 15))
    assert accuracy > 0.35, accuracy
