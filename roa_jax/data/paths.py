"""Where datasets and caches live: one place for the ROA_DATA_DIR / ROA_CACHE_DIR convention."""

import os
import pathlib


def data_root(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """`data_dir`, else env ROA_DATA_DIR (a folder laid out like shared/data), else None."""
    data_dir = data_dir if data_dir is not None else os.environ.get("ROA_DATA_DIR")
    return pathlib.Path(data_dir).expanduser() if data_dir else None


def cache_root(cache_dir: str | os.PathLike | None) -> pathlib.Path:
    """`cache_dir`, else env ROA_CACHE_DIR, else ~/.cache/roa_jax."""
    cache_dir = cache_dir or os.environ.get("ROA_CACHE_DIR") or "~/.cache/roa_jax"
    return pathlib.Path(cache_dir).expanduser()
