"""Tests for roa_jax.data.miniimagenet on a tiny generated copy of the source layout.

The last tests use the real files in `$ROA_DATA_DIR/miniimagenet` and are skipped when
ROA_DATA_DIR is unset.
"""

import csv
import io
import os
import pathlib
import re
import zipfile

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from roa_jax import errors
from roa_jax.data import episodes
from roa_jax.data import miniimagenet as mi

# Not a prefix of the split's classes, so ClassLabel ids (index in WNIDS['val']) differ
# from positions in the fixture's class array.
VAL_WNIDS = tuple(mi.WNIDS["val"][i] for i in (9, 1, 5))
TEST_WNIDS = mi.WNIDS["test"][:2]
NUM_INSTANCES = 4


def _colour(c: int, i: int) -> np.ndarray:
    """Mean RGB of image i of the c-th class in sorted order: identifies its position."""
    return np.array([40 + 50 * c, 40 + 40 * i, 128])


def _jpeg(pixels: np.ndarray, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, **save_kwargs)
    return buffer.getvalue()


def _write_split(
    root: pathlib.Path,
    split: str,
    wnids,
    seed: int = 0,
    shift: int = 0,
    num_instances: int = NUM_INSTANCES,
) -> dict[str, bytes]:
    """Writes `<root>/miniimagenet/{miniimagenet_<split>.zip, <split>.csv}`.

    Image i of the c-th sorted class has mean colour `_colour(c, i) + shift` plus noise
    (clipped to 0..255). Zip entries and CSV rows are written in shuffled orders, as the
    loaders must not rely on them. Returns `{zip member: jpeg bytes}`.
    """
    rng = np.random.default_rng(seed)
    members = {}
    for c, wnid in enumerate(sorted(wnids)):
        for i in range(num_instances):
            noise = rng.integers(-20, 21, mi.IMAGE_SHAPE)
            pixels = np.clip(_colour(c, i) + shift + noise, 0, 255).astype(np.uint8)
            members[f"{split}/{wnid}/{wnid}{i + 1:08d}.jpg"] = _jpeg(pixels)
    _write_zip(root, split, members, rng)
    rows = [member.split("/")[2:0:-1] for member in members]
    _write_csv(root, split, [rows[k] for k in rng.permutation(len(rows))])
    return members


def _write_zip(root: pathlib.Path, split: str, members: dict, rng=None) -> pathlib.Path:
    path = root / "miniimagenet" / f"miniimagenet_{split}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(members)
    if rng is not None:
        names = [names[k] for k in rng.permutation(len(names))]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in names:
            zf.writestr(name, members[name])
    return path


def _write_csv(root: pathlib.Path, split: str, rows) -> pathlib.Path:
    path = root / "miniimagenet" / f"{split}.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["filename", "label"], *rows])
    return path


@pytest.fixture
def data_root(tmp_path):
    """A data folder with val (3 classes) and test (2 classes) x 4 images, no train."""
    root = tmp_path / "data"
    _write_split(root, "val", VAL_WNIDS, seed=1)
    _write_split(root, "test", TEST_WNIDS, seed=2)
    return root


def _read_tfds(builder, split: str) -> dict:
    dataset = builder.as_dataset(split=split, decoders=mi.accurate_decoders(), batch_size=-1)
    return tfds.as_numpy(dataset)


def _check_colours(images: np.ndarray, shift: int = 0) -> None:
    """Each image sits at the class array position its colour was made for."""
    num_classes, num_instances = images.shape[:2]
    means = images.mean(axis=(2, 3), dtype=np.float64)
    expected = np.array(
        [[_colour(c, i) + shift for i in range(num_instances)] for c in range(num_classes)]
    )
    np.testing.assert_allclose(means, expected, atol=4)


def test_constants():
    assert {split: len(wnids) for split, wnids in mi.WNIDS.items()} == {
        "train": 64,
        "val": 16,
        "test": 20,
    }
    all_wnids = [w for wnids in mi.WNIDS.values() for w in wnids]
    assert len(set(all_wnids)) == 100  # disjoint splits
    for wnids in mi.WNIDS.values():
        assert list(wnids) == sorted(wnids)
    for stat in (mi.MEAN, mi.STD):
        chex.assert_shape(stat, (3,))
        assert stat.dtype == np.float32 and np.all((stat > 0) & (stat < 1))


def test_load_shapes_and_order(data_root, tmp_path):
    arrays = mi.load_miniimagenet(data_root, splits=("val", "test"), cache_dir=tmp_path / "c")
    assert list(arrays) == ["val", "test"]
    chex.assert_shape(arrays["val"], (3, NUM_INSTANCES, 84, 84, 3))
    chex.assert_shape(arrays["test"], (2, NUM_INSTANCES, 84, 84, 3))
    for images in arrays.values():
        assert images.dtype == np.uint8
        _check_colours(images)  # classes by sorted wnid, images by sorted filename


def test_load_matches_pil(data_root, tmp_path):
    members = _write_split(data_root, "val", VAL_WNIDS, seed=3)
    (images,) = mi.load_miniimagenet(data_root, "val", cache_dir=tmp_path / "c").values()
    wnid = sorted(VAL_WNIDS)[1]
    pil = np.asarray(Image.open(io.BytesIO(members[f"val/{wnid}/{wnid}00000003.jpg"])))
    np.testing.assert_array_equal(images[1, 2], pil)


def test_second_load_reads_cache(data_root, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = mi.load_miniimagenet(data_root, ("val", "test"), cache_dir)
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        "miniimagenet_v1_test.json",
        "miniimagenet_v1_test.npy",
        "miniimagenet_v1_val.json",
        "miniimagenet_v1_val.npy",
    ]

    def fail(*args):
        raise AssertionError(f"decoded {args[1]} although it is cached")

    monkeypatch.setattr(mi, "_decode_jpeg", fail)
    second = mi.load_miniimagenet(data_root, ("val", "test"), cache_dir)
    chex.assert_trees_all_equal(first, second)


def test_changed_source_rebuilds_cache(data_root, tmp_path):
    cache_dir = tmp_path / "cache"
    before = mi.load_miniimagenet(data_root, "val", cache_dir)["val"]
    zip_path = data_root / "miniimagenet" / "miniimagenet_val.zip"
    mtime = zip_path.stat().st_mtime_ns
    _write_split(data_root, "val", VAL_WNIDS, seed=1, shift=20)
    os.utime(zip_path, ns=(mtime + 10**9, mtime + 10**9))  # even on a coarse clock
    after = mi.load_miniimagenet(data_root, "val", cache_dir)["val"]
    _check_colours(before)
    _check_colours(after, shift=20)
    # A truncated cache file is rebuilt, not returned or raised.
    npy_path = cache_dir / "miniimagenet_v1_val.npy"
    npy_path.write_bytes(npy_path.read_bytes()[:-100])
    np.testing.assert_array_equal(mi.load_miniimagenet(data_root, "val", cache_dir)["val"], after)


def test_missing_split_names_the_file(data_root, tmp_path):
    zip_path = data_root / "miniimagenet" / "miniimagenet_train.zip"
    assert mi.available_splits(data_root) == ("val", "test")
    with pytest.raises(errors.DataError, match=re.escape(str(zip_path))):
        mi.load_miniimagenet(data_root, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # checked before decoding val or test
    with pytest.raises(errors.DataError, match=re.escape(str(zip_path))):
        mi.build_tfds(data_root, ("val", "train"), tmp_path / "tfds")
    assert not (tmp_path / "tfds").exists()
    # The builder itself, used through plain tfds.
    builder = mi.MiniImagenet(config="train", data_dir=str(tmp_path / "tfds"))
    config = tfds.download.DownloadConfig(manual_dir=str(data_root / "miniimagenet"))
    with pytest.raises(errors.DataError, match=re.escape(str(zip_path))):
        builder.download_and_prepare(download_config=config)


def test_bad_arguments(data_root, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown miniImageNet split 'valid'"):
        mi.load_miniimagenet(data_root, "valid", tmp_path)
    monkeypatch.delenv("ROA_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="ROA_DATA_DIR is not set"):
        mi.load_miniimagenet(splits="val", cache_dir=tmp_path)
    monkeypatch.setenv("ROA_DATA_DIR", str(data_root))
    monkeypatch.setenv("ROA_CACHE_DIR", str(tmp_path / "env_cache"))
    chex.assert_shape(mi.load_miniimagenet(splits="test")["test"], (2, NUM_INSTANCES, 84, 84, 3))
    assert (tmp_path / "env_cache" / "miniimagenet_v1_test.npy").is_file()


def test_csv_entry_missing_from_zip(data_root, tmp_path):
    wnid = VAL_WNIDS[0]
    csv_path = data_root / "miniimagenet" / "val.csv"
    with open(csv_path, "a", newline="") as f:
        csv.writer(f).writerow([f"{wnid}00000099.jpg", wnid])
    match = f"1 of the 13 images listed in {re.escape(str(csv_path))} are not in .*{wnid}00000099"
    with pytest.raises(ValueError, match=match):
        mi.load_miniimagenet(data_root, "val", tmp_path / "cache")
    with pytest.raises(ValueError, match=match):
        mi.build_tfds(data_root, "val", tmp_path / "tfds")


@pytest.mark.parametrize(
    "bad_image, problem",
    [
        (_jpeg(np.zeros((84, 83, 3), np.uint8)), "is a 83x84 RGB JPEG"),
        (_jpeg(np.zeros((84, 84), np.uint8)), "is a 84x84 L JPEG"),
        (_jpeg(np.zeros((84, 84, 3), np.uint8))[:200], "is not a readable JPEG"),
    ],
)
def test_bad_image(data_root, tmp_path, bad_image, problem):
    members = _write_split(data_root, "test", TEST_WNIDS)
    member = sorted(members)[5]
    members[member] = bad_image
    _write_zip(data_root, "test", members)
    match = re.escape(f"miniimagenet_test.zip:{member} {problem}")
    with pytest.raises(ValueError, match=match):
        mi.load_miniimagenet(data_root, "test", tmp_path / "cache")
    with pytest.raises(ValueError, match=match):
        mi.build_tfds(data_root, "test", tmp_path / "tfds")


def test_bad_csv(data_root, tmp_path):
    csv_path = _write_csv(data_root, "val", [[f"{VAL_WNIDS[0]}00000001.jpg", "n99999999"]])
    match = f"{re.escape(str(csv_path))}, line 2: .* 16 'val' classes"
    with pytest.raises(ValueError, match=match):
        mi.load_miniimagenet(data_root, "val", tmp_path)
    csv_path.write_text("file,wnid\n")
    with pytest.raises(ValueError, match="header .* expected `filename,label`"):
        mi.load_miniimagenet(data_root, "val", tmp_path)
    # Unequal classes are a valid tfds dataset but not a class array.
    members = _write_split(data_root, "val", VAL_WNIDS)
    rows = [
        m.split("/")[2:0:-1]
        for m in members
        if m != f"val/{VAL_WNIDS[0]}/{VAL_WNIDS[0]}00000002.jpg"
    ]
    _write_csv(data_root, "val", rows)
    match = f"classes {{'{VAL_WNIDS[0]}': 3}} have other numbers of images than the 4 of the rest"
    with pytest.raises(ValueError, match=match):
        mi.load_miniimagenet(data_root, "val", tmp_path)


def test_tfds_builder(data_root, tmp_path):
    builders = mi.build_tfds(data_root, tfds_dir=tmp_path / "tfds")
    assert list(builders) == ["val", "test"]  # only the present splits; train is absent
    arrays = mi.load_miniimagenet(data_root, cache_dir=tmp_path / "cache", splits=list(builders))
    for split, builder in builders.items():
        info = builder.info
        assert info.name == "mini_imagenet" and str(info.version) == "1.0.0"
        assert list(info.splits) == [split]
        assert info.splits[split].num_examples == arrays[split].shape[0] * NUM_INSTANCES
        assert info.features["label"].names == list(mi.WNIDS[split])
        data = _read_tfds(builder, split)
        # Stored in class array order, and decoded like load_miniimagenet.
        np.testing.assert_array_equal(data["image"], arrays[split].reshape(-1, 84, 84, 3))
        wnids = sorted(VAL_WNIDS if split == "val" else TEST_WNIDS)
        expected_labels = np.repeat([mi.WNIDS[split].index(w) for w in wnids], NUM_INSTANCES)
        np.testing.assert_array_equal(data["label"], expected_labels)
        filenames = [f.decode() for f in data["filename"]]
        assert filenames == sorted(filenames) and filenames[0].startswith(wnids[0])


def test_tfds_builder_is_deterministic_and_lossless(data_root, tmp_path):
    members = _write_split(data_root, "val", VAL_WNIDS, seed=4)
    reads = []
    for tfds_dir in ("tfds_a", "tfds_b"):
        (builder,) = mi.build_tfds(data_root, ["val"], tmp_path / tfds_dir).values()
        reads.append(_read_tfds(builder, "val"))
        raw = builder.as_dataset(
            split="val", decoders={"image": tfds.decode.SkipDecoding()}, batch_size=-1
        )
        stored = dict(zip(*tfds.as_numpy((raw["filename"], raw["image"])), strict=True))
        assert stored == {m.split("/")[-1].encode(): data for m, data in members.items()}
    chex.assert_trees_all_equal(*reads)


def _real_data_root() -> pathlib.Path:
    if not os.environ.get("ROA_DATA_DIR"):
        pytest.skip(
            "set ROA_DATA_DIR to a folder holding miniimagenet/ to test on the real val split."
        )
    return pathlib.Path(os.environ["ROA_DATA_DIR"])


@pytest.fixture(scope="module")
def real_val(tmp_path_factory):
    """The real val split, decoded into a temporary cache (about 7 s on 2 cores)."""
    root = _real_data_root()
    cache_dir = tmp_path_factory.mktemp("miniimagenet_cache")
    return root, mi.load_miniimagenet(root, "val", cache_dir)["val"]


def test_real_val_split(real_val):
    root, images = real_val
    chex.assert_shape(images, (16, 600, 84, 84, 3))
    # Spot check the order: class 3 in sorted wnid order, its 7th filename.
    wnid = mi.WNIDS["val"][3]
    with zipfile.ZipFile(root / "miniimagenet" / "miniimagenet_val.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(f"val/{wnid}/"))
        pil = np.asarray(Image.open(io.BytesIO(zf.read(names[6]))))
    np.testing.assert_array_equal(images[3, 6], pil)
    # MEAN/STD normalize the real pixels to about zero mean, unit std per channel.
    x = (images[:, ::10] / 255.0 - mi.MEAN) / mi.STD
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2, 3)), 0.0, atol=0.25)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2, 3)), 1.0, atol=0.3)


def test_real_val_episode(real_val):
    _, images = real_val
    n_way, k_shot, n_query = 5, 1, 15
    sample = jax.jit(episodes.sample_episode, static_argnums=(2, 3, 4))
    episode = sample(jax.random.key(0), jax.device_put(images), n_way, k_shot, n_query)
    chex.assert_shape(episode.support_x, (n_way * k_shot, 84, 84, 3))
    chex.assert_shape(episode.query_x, (n_way * n_query, 84, 84, 3))
    chex.assert_shape((episode.support_y, episode.query_y), ((n_way * k_shot,), (n_way * n_query,)))
    # With mean 0 and std 1 the pixels are x / 255: find each image's source class.
    where = {images[c, i].tobytes(): (c, i) for c in range(16) for i in range(600)}

    def sources(x):
        pixels = np.rint(np.asarray(x) * 255).astype(np.uint8)
        return np.array([where[p.tobytes()] for p in pixels])

    support, query = sources(episode.support_x), sources(episode.query_x)
    assert len(set(support[:, 0])) == n_way  # 5 distinct source classes
    support_class = dict(zip(np.asarray(episode.support_y).tolist(), support[:, 0], strict=True))
    assert sorted(support_class) == list(range(n_way))
    query_class = [support_class[y] for y in episode.query_y.tolist()]
    np.testing.assert_array_equal(query[:, 0], query_class)
    assert len({tuple(s) for s in np.concatenate([support, query])}) == n_way * (k_shot + n_query)


def test_real_val_tfds(real_val, tmp_path):
    root, images = real_val
    (builder,) = mi.build_tfds(root, ["val"], tmp_path / "tfds").values()
    assert builder.info.splits["val"].num_examples == 16 * 600
    data = _read_tfds(builder, "val")
    np.testing.assert_array_equal(np.bincount(data["label"]), np.full(16, 600))
    np.testing.assert_array_equal(data["image"][::97], images.reshape(-1, 84, 84, 3)[::97])
