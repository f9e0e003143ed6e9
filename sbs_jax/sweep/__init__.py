"""`sbs sweep`: grids of training runs (methods × training fractions × seeds × models), their results
recounted from prediction files, tables and figures (docs/sweeps.md)."""
