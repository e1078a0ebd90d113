"""What the engine trains: a model family x an objective, built from the resolved config.

:class:`TrainingJob` is the one implementation of the :class:`Job` contract the engine calls
(:mod:`ragr.train.engine` knows nothing about families or losses). ``ragr train`` and ``ragr distill``
both build one: the family from ``model`` (or ``student``), the objective from the loss
(:func:`ragr.train.objectives.objective_for`); distillation is the grouped-scores objective with
teacher targets (or the vectors objective), so it runs through the same engine, launchers and forwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import torch



class Job(Protocol):
    """The engine's contract. Called in this order: build_dataset, build_model, build_loss, eval_rows;
    then per micro-step collate + compute_loss; evaluate / count_eval_items around training; save."""

    def build_dataset(self) -> Any: ...                      # map-style, with set_epoch(epoch) and len()
    def build_model(self) -> torch.nn.Module: ...            # a fresh model (also used to gather a sharded one)
    def build_loss(self) -> torch.nn.Module: ...
    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]: ...   # must hold "queries"
    def compute_loss(self, fwd, loss_fn, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...
    def example_costs(self, dataset) -> Any: ...             # trainer.max_tokens_per_batch
    def eval_rows(self) -> Any: ...                          # None: nothing to evaluate
    def count_eval_items(self, rows) -> int: ...
    def evaluate(self, model, rows, progress=None) -> dict[str, float]: ...
    def save(self, model, path: Path) -> None: ...


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class TrainingJob:
    """A family and an objective, for ``ragr train`` (``cfg["model"]``) or ``ragr distill`` (``cfg["student"]``).

    Args:
        cfg: the resolved config.
        quiet: no progress output (ranks other than 0 are always quiet).
        model_path / teacher_path: resolved local folders (resolved once by the parent, before a run dir exists).
    """

    def __init__(self, cfg: dict[str, Any], quiet: bool = False, model_path: str | None = None,
                 teacher_path: str | None = None) -> None:
        from ragr.families import get_family
        from ragr.registry import losses
        from ragr.train.objectives import objective_for
        from ragr.ui import Console

        self.cfg = cfg
        self.distill = "student" in cfg
        self.model_node: dict[str, Any] = cfg["student"] if self.distill else cfg["model"]
        self.model_key = "student.name_or_path" if self.distill else "model.name_or_path"
        self.family = get_family(self.model_node["family"])
        loss_cls = losses.get(cfg["loss"]["name"])
        self.loss_targets = getattr(loss_cls, "targets", "labels")
        self.console = Console(quiet=quiet or _rank() != 0)
        self.model_path, self.teacher_path = model_path, teacher_path
        self.run_dir = Path(cfg["output_dir"])
        self.model = None
        self.objective = objective_for(loss_cls)(self)

    # ---- building -----------------------------------------------------------------------------
    def build_dataset(self):
        return self.objective.build_dataset()

    def build_model(self):
        overrides = getattr(self.objective, "model_overrides", dict)()
        node = {**self.model_node, "name_or_path": self.model_path or self.model_node["name_or_path"], **overrides}
        self.model = self.family.build(node, key=self.model_key)
        check = getattr(self.objective, "check_model", None)
        if check is not None:
            check(self.model)
        return self.model

    def build_loss(self):
        from ragr.losses import build_loss

        node = {**self.cfg["loss"], **getattr(self.objective, "loss_overrides", dict)()}
        loss = build_loss(node, embed_dim=getattr(self.model, "dim", None))
        self.objective.check_loss(loss)
        return loss

    def collate(self, examples):
        return self.objective.collate(examples)

    def example_costs(self, dataset):
        return self.objective.example_costs(dataset)

    def compute_loss(self, fwd, loss_fn, batch):
        return self.objective.compute_loss(fwd, loss_fn, batch)

    # ---- evaluation ---------------------------------------------------------------------------
    def eval_file_rows(self):
        from ragr.data.formats import load_rerank_file

        path = self.cfg["data"].get("eval")
        return load_rerank_file(path, columns=self.cfg["data"].get("columns")) if path else None

    def eval_rows(self):
        rows = self.eval_file_rows()
        if rows is None and not self.objective.count_extra():
            return None
        return {"eval": rows}

    def count_eval_items(self, rows) -> int:
        from ragr.eval.rerank import count_items

        n = count_items(self.family.scorer(self.model), rows["eval"]) if rows["eval"] else 0
        return n + self.objective.count_extra()

    def evaluate(self, model, rows, progress=None) -> dict[str, float]:
        """Dev metrics through the family's scorer (:func:`ragr.eval.rerank.evaluate`), plus the objective's own."""
        from ragr.train.health import dev_metrics

        metrics: dict[str, float] = {}
        if rows["eval"]:
            was_training = model.training  # dev_metrics: the rank metrics plus score_spread (collapse, health.py)
            metrics.update(dev_metrics(self.family.scorer(model), rows["eval"], batch_size=64, progress=progress))
            model.train(was_training)
        metrics.update(self.objective.extra_metrics(model, progress))
        return metrics

    # ---- outputs ------------------------------------------------------------------------------
    def save(self, model, path: Path) -> None:
        model.save(path)

    def record(self, key: str, value: Any) -> None:
        """Record ``key: value`` (teacher provenance) in ``run_dir/manifest.json`` (rank 0 only)."""
        if _rank() != 0:
            return
        from ragr.train.rundir import atomic_write_text

        path = self.run_dir / "manifest.json"
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        manifest[key] = value
        atomic_write_text(path, json.dumps(manifest, indent=2, default=str))


def agreement_note(job: TrainingJob) -> str | None:
    """What the distillation agreement was measured on (for the summary)."""
    obj = job.objective
    if getattr(obj, "agreement_set", None):
        return obj.agreement_set[3]
    if hasattr(obj, "agreement_texts") and obj.texts_index is not None:
        return f"{len(obj.agreement_texts()[0])} training texts"
    return None

