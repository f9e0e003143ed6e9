"""Compiling for TPU slices without a TPU: slice names and chip figures (`topologies`), what a compiled
program needs per chip (`analysis`), and the report of a run's plan (`report`)."""
