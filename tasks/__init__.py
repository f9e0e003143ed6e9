"""SeqIO task registrations of sbs-jax (installed as `sbs_jax.tasks`).

Nothing is registered on import: the paper's tasks need a data dir and a vocabulary, so registration is an
explicit (gin-configurable) call:

    from sbs_jax import tasks
    tasks.register_paper_tasks("/data/datasets", vocabulary="/models/t5/spiece.model", valid_from_train=0.1)
    tasks.register_arith_tasks()          # the embedded quickstart task; no files needed
"""
from sbs_jax.tasks.arith import register_arith_tasks  # noqa: F401
from sbs_jax.tasks.paper import register_paper_tasks  # noqa: F401
