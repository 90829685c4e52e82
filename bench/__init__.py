"""Benchmarks of the reward service (``reward-service bench``); results go to docs/."""
