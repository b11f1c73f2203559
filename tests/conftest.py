"""Shared test settings: hypothesis runs deterministically (derandomised, no deadline), and
Ray (tests/test_integrations.py) advertises 127.0.0.1 for every node it starts, so nothing a
test starts listens beyond loopback. Ray reads the variable when it is imported, and it is
inherited by the processes Ray starts."""

import os

from hypothesis import settings

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

settings.register_profile("repo", derandomize=True, deadline=None, max_examples=60)
settings.load_profile("repo")
