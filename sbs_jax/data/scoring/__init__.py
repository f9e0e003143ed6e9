"""Scoring predictions: task metrics."""
