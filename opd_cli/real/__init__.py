"""The real-model world: SmolLM2-135M-Instruct from PyPI (teacher), a depth-pruned copy (student), a short-answer
task with dev/test/ood splits (`opd real build`)."""
