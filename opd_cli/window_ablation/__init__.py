"""`opd window-ablation` (paper §5, Table 3): its options and window parsing (:mod:`~opd_cli.window_ablation.config`,
no torch), the orchestration (:mod:`~opd_cli.window_ablation.run`), the reuse of finished runs
(:mod:`~opd_cli.window_ablation.reuse`) and the table (:mod:`~opd_cli.window_ablation.table`)."""
