"""opd: prefix on-policy distillation of reasoning language models.

Docstrings cite three papers by short name, with the section, figure or table they implement:

- "the paper" / "the prefix-OPD paper": *Fast and Effective On-Policy Distillation from Reasoning Prefixes*
  (Zhang et al., 2026);
- "Rethinking OPD": *Rethinking On-Policy Distillation of Large Language Models: Phenomenology, Mechanism, and
  Recipe* (Li et al., 2026, arXiv:2604.13016);
- "PG-OPD": *Prefix-Guided On-Policy Distillation: Mining Golden Trajectories from Rollouts*.
"""

__version__ = "0.1.0"
