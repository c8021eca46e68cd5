"""The errors that mean the user gave something wrong, not that the code has a bug.

A binary (experiments/common.py `run`) prints a `UserError` as one line naming the flag, file
or folder, and lets every other exception keep its traceback. `UserError` is a `ValueError`,
so callers that catch ValueError keep working; raise the subclass that says what was wrong:

    ConfigError      a config field, flag value or protocol out of its allowed range
    DeviceError      a device preset, device .json or device parameter that is invalid
    DataError        a dataset file missing or corrupt, or a task the data cannot make
    RunFolderError   a run or results folder that is in use, damaged, unfinished or missing
    DivergenceError  the loss went non-finite (a learning rate or noise too large)
"""


class UserError(ValueError):
    """Something the user gave (a flag, config, file, folder) is wrong; the message says what
    and how to fix it."""


class ConfigError(UserError):
    """A config field, flag value or evaluation protocol out of its allowed range."""


class DeviceError(UserError):
    """A device preset, device .json or device parameter that is unknown or invalid."""


class DataError(UserError):
    """A dataset file missing or corrupt, or a task the data cannot make (N-way > classes)."""


class RunFolderError(UserError):
    """A run or results folder in use, damaged, unfinished or missing (e.g. no checkpoint)."""


class DivergenceError(UserError, FloatingPointError):
    """The training loss went non-finite: the learning rate or write noise is too large."""
