"""The host input pipeline: registered tasks -> paired (optionally packed) training batches."""
