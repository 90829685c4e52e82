"""Runnable examples of the trainer library."""
