"""The method and the machinery every command shares: the OPD maths (:mod:`~opd_cli.core.maths`), scoring and
generation, models, prompts and grading, the FLOPs formula, the vLLM engine and served teacher, sharded models, and
the config, run-folder, tracking and logging machinery.

Nothing here imports a module of opd_cli outside ``opd_cli.core`` (tests/test_architecture.py guards that): the
commands (``opd_cli.train``, ``opd_cli.evaluate``, ...), the toy world and the problem sources (:mod:`opd_cli.data`)
build on core, never the other way round.
"""
