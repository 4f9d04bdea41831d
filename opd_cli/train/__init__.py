"""`opd train`: its options (:mod:`~opd_cli.train.config`, no torch), the command (:mod:`~opd_cli.train.run`), the
``trl.DistillationTrainer`` subclass it runs (:mod:`~opd_cli.train.trainer`) and PG-OPD's rollout allocation
(:mod:`~opd_cli.train.pg_opd`)."""
