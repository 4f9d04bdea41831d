"""Analyses that are not training: where the KL (and the entropies, the overlap) sits along the output, how the
rollouts' rewards relate to their correctness, and how far a prefix written by one model carries the other.

    kl_by_position        Fig. 2 and 5 (and Rethinking OPD Fig. 13/23): per-position-bin profiles of student
                          rollouts scored by the teacher
    position_table        its tidy table: columns, binning, rows
    rollout_rewards       --grade: each rollout's sequence-mean reward and correctness, AUROC (Rethinking OPD Fig. 14)
    probe_teacher_prefix  Fig. 3: the student continues from teacher prefixes; --prefix-from student: the mirror
                          (Rethinking OPD Fig. 11b)

Everything heavy (torch, transformers) is imported inside functions.
"""
