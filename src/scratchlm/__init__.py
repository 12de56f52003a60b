"""scratchlm: build a large language model from scratch, from raw text to a model you can chat with."""

__version__ = "0.1.0"
