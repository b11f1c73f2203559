"""Shared test settings: hypothesis runs deterministically (derandomised, no deadline)."""

from hypothesis import settings

settings.register_profile("repo", derandomize=True, deadline=None, max_examples=60)
settings.load_profile("repo")
