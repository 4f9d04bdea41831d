"""opd: prefix on-policy distillation of reasoning language models."""

__version__ = "0.1.0"
