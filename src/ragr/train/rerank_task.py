"""Reranker training (cross-encoder, LLM seq-cls, LLM yes-logit) for the family-agnostic engine.

Groups of ``1 + data.num_negatives`` candidates per query (one for pointwise data) are scored by
the model and fed to a reranker loss (``pointwise``, ``pairwise``, ``listwise``); evaluation scores
the dev file through :class:`ragr.infer.Reranker`, the same path as ``ragr rerank`` and ``ragr eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ragr.errors import UserError


class RerankerTask:
    """Train a reranker family on pointwise / grouped / triplet data (see :mod:`ragr.data.rerank`)."""

    eval_batch_size = 64
    #: losses this task can train with (checked when the config is composed)
    losses = ("pointwise", "pairwise", "listwise")

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.model = None
        self.format: str | None = None

    def build_model(self):
        from ragr.models import build_model

        self.model = build_model(self.cfg["model"])
        return self.model

    def build_loss(self):
        from ragr.losses import build_loss
        from ragr.losses.rerank import RerankLoss
        from ragr.registry import losses

        loss = build_loss(self.cfg["loss"])
        if not isinstance(loss, RerankLoss):
            rerank = [n for n in losses.names() if isinstance(losses.get(n), type) and issubclass(losses.get(n), RerankLoss)]
            raise UserError(f"loss '{self.cfg['loss']['name']}' is not a reranker loss; for model family "
                            f"'{self.cfg['model']['family']}' use one of: {', '.join(rerank)}")
        if self.format == "pointwise" and self.cfg["loss"]["name"] != "pointwise":
            raise UserError(f"pointwise data has one candidate per query; loss '{self.cfg['loss']['name']}' needs "
                            "groups (use loss=pointwise, or grouped / triplet data)")
        return loss

    def build_dataset(self):
        from ragr.data.rerank import RerankDataset, load_rerank_training_file

        data = self.cfg["data"]
        if not data.get("train"):
            raise UserError("data.train is not set (pass data.train=path/to/train.jsonl)")
        fmt = data.get("format", "auto")
        if fmt not in ("auto", "pointwise", "grouped", "triplet"):
            raise UserError(f"data.format={fmt} is not reranker data; use pointwise, grouped, triplet or auto")
        label_key = data.get("label_key", "label")
        index, self.format = load_rerank_training_file(data["train"], fmt, label_key, data["num_negatives"])
        return RerankDataset(index, self.format, data["num_negatives"], seed=self.cfg["seed"], label_key=label_key)

    @staticmethod
    def collate(examples):
        from ragr.data.rerank import collate_rerank

        return collate_rerank(examples)

    def compute_loss(self, model, unwrapped, loss_fn, batch, device) -> dict[str, torch.Tensor]:
        labels = batch["labels"].to(device)
        if hasattr(unwrapped, "tokenize_pairs") and hasattr(unwrapped, "pad_features"):
            scores = self.chunked_scores(model, unwrapped, batch["pair_queries"], batch["docs"],
                                         self.cfg["trainer"]["chunk_size"], device)
        else:
            feats = {k: v.to(device) for k, v in unwrapped.tokenize(batch["pair_queries"], batch["docs"]).items()}
            scores = model(**feats)
        return loss_fn(scores.view(labels.shape).float(), labels)

    @staticmethod
    def chunked_scores(model, unwrapped, queries, docs, chunk_size: int, device) -> torch.Tensor:
        """Scores of the pairs in input order, computed in length-planned chunks of at most ``chunk_size``.

        Each chunk is padded only to its own longest pair and the chunks share one input-embedding
        lookup (:mod:`ragr.models.chunking`); the scores and gradients equal one padded forward (tests).
        """
        from ragr.models.chunking import chunk_overhead, forward_chunks, plan_chunks

        feats = unwrapped.tokenize_pairs(list(queries), list(docs))
        plan = plan_chunks([len(f["input_ids"]) for f in feats], chunk_size, chunk_overhead(device))
        chunks = [{k: v.to(device) for k, v in unwrapped.pad_features([feats[i] for i in idx]).items()} for idx in plan]
        return forward_chunks(model, unwrapped, [i for idx in plan for i in idx], chunks)

    def eval_rows(self):
        from ragr.data.formats import load_rerank_file

        path = self.cfg["data"].get("eval")
        return load_rerank_file(path) if path else None

    def evaluate(self, model, rows, progress=None) -> dict[str, float]:
        from ragr.eval.rerank import evaluate_reranker

        return evaluate_reranker(model, rows, batch_size=self.eval_batch_size, progress=progress)

    @staticmethod
    def count_eval_items(rows) -> int:
        from ragr.eval.rerank import count_pairs

        return count_pairs(rows)

    def save(self, model, path: Path) -> None:
        model.save(path)
