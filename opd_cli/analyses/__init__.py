"""Analyses of the prefix-OPD paper that are not training: where the KL sits along the output, and how far a
teacher-written prefix carries an untrained student.

    kl_by_position   Fig. 2 and 5: per-position-bin reverse KL of student rollouts scored by the teacher
    probe            Fig. 3: the student continues from the first L tokens of teacher solutions

Everything heavy (torch, transformers) is imported inside functions.
"""
