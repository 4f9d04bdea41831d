"""The built-in toy world: a synthetic planning task, a character-level tokenizer, a tiny teacher and student.

Heavy imports (torch, transformers) stay inside functions so ``import opd_cli.toy`` is cheap.
"""
