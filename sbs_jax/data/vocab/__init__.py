"""Vocabularies and the text codec (no TensorFlow import in `codec` and `eos_marker`)."""
