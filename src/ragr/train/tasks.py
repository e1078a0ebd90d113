"""What the engine trains: one Task per model family (model, data, loss, evaluation, saving).

The engine (:mod:`ragr.train.engine`) is family-agnostic; a family plugs in by providing a Task with
``build_model``, ``build_dataset``, ``collate``, ``compute_loss``, ``evaluate`` and ``save``.
Tasks are registered in :data:`ragr.registry.tasks` under the family name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class EmbedderTask:
    """Bi-encoder training with InfoNCE/MRL on pair / triplet / scored data, evaluated on reranking data."""

    #: losses this task can train with (checked when the config is composed)
    losses = ("infonce", "mrl")

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.model = None
        if cfg.get("trainer", {}).get("grad_cache") and type(self).compute_loss is not EmbedderTask.compute_loss:
            from ragr.errors import UserError

            raise UserError(f"trainer.grad_cache=true is implemented for the embedder family, not {type(self).__name__}")

    def build_model(self):
        from ragr.models import build_model

        self.model = build_model(self.cfg["model"])
        return self.model

    def build_loss(self):
        from ragr.losses import build_loss

        return build_loss(self.cfg["loss"], embed_dim=self.model.dim)

    def build_dataset(self):
        from ragr.data.dataset import ContrastiveDataset
        from ragr.data.formats import load_training_file

        data = self.cfg["data"]
        if not data.get("train"):
            from ragr.errors import UserError

            raise UserError("data.train is not set (pass data.train=path/to/train.jsonl)")
        index, fmt = load_training_file(data["train"], data.get("format", "auto"))
        self.format = fmt
        return ContrastiveDataset(index, data["num_negatives"], seed=self.cfg["seed"], use_negatives=fmt == "triplet")

    @staticmethod
    def collate(examples):
        from ragr.data.dataset import collate

        return collate(examples)

    def example_costs(self, dataset, block: int = 1024):
        """Expected tokens of each example, for ``trainer.max_tokens_per_batch`` (see ragr.train.token_budget).

        The query's tokens plus the mean tokens of its positives plus ``num_negatives`` times the mean
        tokens of its negatives (when the data has them), truncated to the model's max lengths.
        """
        import numpy as np

        m = self.model
        n_neg = dataset.num_negatives if dataset.use_negatives else 0
        q_prompt, d_prompt = getattr(m, "query_prompt", ""), getattr(m, "doc_prompt", "")  # ColBERT has none

        def lengths(texts, prompt, max_len):
            if not texts:
                return []
            ids = m.tokenizer([prompt + t for t in texts], truncation=True, max_length=max_len)["input_ids"]
            return [len(x) for x in ids]

        costs = np.zeros(len(dataset))
        for start in range(0, len(dataset), block):
            recs = [dataset.index[i] for i in range(start, min(start + block, len(dataset)))]
            q = lengths([(r.get("prompt") or "") + r["query"] for r in recs], q_prompt, m.max_query_length)
            for k, r in enumerate(recs):
                pos = lengths(list(r["pos"]), d_prompt, m.max_doc_length)
                neg = lengths(list(r.get("neg") or []), d_prompt, m.max_doc_length) if n_neg else []
                costs[start + k] = q[k] + float(np.mean(pos)) + (n_neg * float(np.mean(neg)) if neg else 0.0)
        return costs

    def compute_loss(self, model, unwrapped, loss_fn, batch, device) -> dict[str, torch.Tensor]:
        chunk = self.cfg["trainer"]["chunk_size"]
        false_negatives = batch["false_negatives"].to(device)
        if self.cfg["trainer"].get("grad_cache"):  # same loss and gradients, memory of one chunk (see grad_cache.py)
            from ragr.train.grad_cache import cached_step

            launcher = self.cfg.get("launcher", {}).get("name", "local")
            if launcher not in ("local", "ddp"):
                from ragr.errors import UserError

                raise UserError(f"trainer.grad_cache=true runs with launcher=local or ddp, not {launcher}")
            return cached_step(model, unwrapped, loss_fn, batch["queries"], batch["docs"], (false_negatives,), chunk, device)
        q_emb = unwrapped.embed(batch["queries"], is_query=True, forward=model, chunk_size=chunk)
        d_emb = unwrapped.embed(batch["docs"], is_query=False, forward=model, chunk_size=chunk)
        return loss_fn(q_emb.float(), d_emb.float(), false_negatives)

    def eval_rows(self):
        from ragr.data.formats import load_rerank_file

        path = self.cfg["data"].get("eval")
        return load_rerank_file(path) if path else None

    def evaluate(self, model, rows, progress=None) -> dict[str, float]:
        from ragr.eval.rerank import evaluate_embedder

        return evaluate_embedder(model, rows, batch_size=64, progress=progress)

    @staticmethod
    def count_eval_items(rows) -> int:
        from ragr.eval.rerank import count_texts

        return count_texts(rows)

    def save(self, model, path: Path) -> None:
        model.save(path)
