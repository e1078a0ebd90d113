"""``ragr distill``: label the data with a teacher, then train the student on those labels.

Not a trainer of its own: the student is a :class:`ragr.train.job.TrainingJob` whose objective is
grouped scores with teacher targets (``distill-kl`` / ``-mse`` / ``-bce``, ``llm-preference``; the
teacher scores every candidate first, cached and provenance-keyed, on every rank) or teacher
vectors (``stella``). It runs on every launcher, through the same engine and chunked forwards as
``ragr train``; the config is checked by :func:`ragr.config.checks.validate_distill`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragr.errors import UserError


def run_distill(cfg: dict[str, Any], quiet: bool = False) -> dict[str, Any] | None:
    """Resolve the teacher and student (failing fast, before a run directory exists), then train on the launcher."""
    from ragr.models.hub import resolve_model_path

    teacher = cfg["teacher"]
    teacher_path = None
    if teacher["family"] == "vectors":
        if not Path(str(teacher["name_or_path"])).expanduser().is_file():
            raise UserError(f"teacher.name_or_path={teacher['name_or_path']}: no such vectors file (write one with `ragr embed`)")
    elif teacher["family"] != "data":
        teacher_path = resolve_model_path(str(teacher["name_or_path"]), key="teacher.name_or_path")
    student_path = resolve_model_path(str(cfg["student"]["name_or_path"]), key="student.name_or_path")
    if cfg["launcher"]["name"] != "local":
        from ragr.registry import launchers

        return launchers.get(cfg["launcher"]["name"])(cfg, quiet=quiet)  # ranks resolve the same paths again
    if cfg["launcher"].get("num_processes", 1) != 1:
        raise UserError("launcher=local runs one process; for several use launcher=ddp (or deepspeed-zero*, fsdp) "
                        "with launcher.num_processes=N")
    from ragr.train.engine import Engine
    from ragr.train.job import TrainingJob, agreement_note

    job = TrainingJob(cfg, quiet=quiet, model_path=student_path, teacher_path=teacher_path)
    results = Engine(cfg, job, quiet=quiet).run()
    results["agreement_on"] = agreement_note(job)
    return results
