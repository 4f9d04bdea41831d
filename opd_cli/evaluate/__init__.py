"""`opd eval`: its options (:mod:`~opd_cli.evaluate.config`, no torch), the evaluation of one model on its
benchmarks (:mod:`~opd_cli.evaluate.model`, reused by other commands) and the command with the checkpoints of a
training run (:mod:`~opd_cli.evaluate.run`)."""
