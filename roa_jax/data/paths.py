"""Where datasets and caches live: one place for the ROA_DATA_DIR / ROA_CACHE_DIR convention."""

import os
import pathlib

from roa_jax import errors


def data_root(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """`data_dir`, else env ROA_DATA_DIR, else None (download through tfds).

    The folder holds one subfolder per dataset (`omniglot/`, `miniimagenet/`, `devices/`;
    README, "Data"). A folder that is named but does not exist is an error, not a download.
    """
    source = "--data_dir"
    if data_dir is None:
        data_dir, source = os.environ.get("ROA_DATA_DIR"), "ROA_DATA_DIR"
    if not data_dir:
        return None
    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise errors.DataError(
            f"{source}={data_dir}: no such folder. Point it at the folder that holds omniglot/ "
            "(and miniimagenet/), or unset it to download through tfds."
        )
    return root


def cache_root(cache_dir: str | os.PathLike | None) -> pathlib.Path:
    """`cache_dir`, else env ROA_CACHE_DIR, else ~/.cache/roa_jax."""
    cache_dir = cache_dir or os.environ.get("ROA_CACHE_DIR") or "~/.cache/roa_jax"
    return pathlib.Path(cache_dir).expanduser()


def shown(path: str | os.PathLike) -> str:
    """`path` as results record it: under ROA_DATA_DIR, as `$ROA_DATA_DIR/...` (portable)."""
    root = os.environ.get("ROA_DATA_DIR")
    path = pathlib.Path(path).expanduser()
    if root and path.is_absolute() and path.is_relative_to(root := pathlib.Path(root).expanduser()):
        return str(pathlib.PurePosixPath("$ROA_DATA_DIR", path.relative_to(root)))
    return str(path)
