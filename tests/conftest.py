"""Shared pytest setup.

The README runs the tests in two pytest-xdist workers (`-n 2 --dist loadfile`: each file in
one worker, so a module's fixtures and a data cache are built once). Two processes on one
GPU would each preallocate 75 % of its memory; under xdist they allocate as they go.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
