"""ColBERT training task: the embedder's data (pair / triplet / scored), MaxSim scores, InfoNCE."""

from __future__ import annotations

from typing import Any

import torch

from ragr.models.chunking import chunk_overhead, forward_chunks, plan_chunks
from ragr.train.tasks import EmbedderTask


class ColBERTTask(EmbedderTask):
    """Late-interaction training: in-batch + hard-negative InfoNCE on the MaxSim score matrix.

    Data, sampling and collation are the embedder's; the loss must offer ``score_loss(scores,
    false_negatives)`` (InfoNCE does), because ColBERT scores are not dot products of two vectors.
    Evaluation scores the dev reranking file with MaxSim (each distinct text encoded once).
    """

    losses = ("infonce",)

    def build_loss(self):
        from ragr.errors import UserError
        from ragr.losses import build_loss

        loss = build_loss(self.cfg["loss"], embed_dim=self.model.dim)
        if not hasattr(loss, "score_loss"):
            raise UserError(f"loss={self.cfg['loss']['name']} does not apply to ColBERT models; "
                            "use a loss that scores a similarity matrix (loss=infonce)")
        return loss

    @staticmethod
    def embed(model, feats: dict[str, torch.Tensor], chunk_size: int, unwrapped=None) -> torch.Tensor:
        """Token vectors for padded ``feats``, computed in length-planned chunks trimmed to their own length.

        Each chunk runs only up to its longest text (attended or scored token), then is zero-padded back
        to the batch length: the same vectors as one padded forward, without the padding's cost. The
        chunks share one input-embedding lookup (see :mod:`ragr.models.chunking`).
        """
        used = feats["attention_mask"].bool() | feats["token_mask"].bool()
        positions = torch.arange(used.shape[1], device=used.device)
        lengths = (used.long() * (positions + 1)).amax(1)
        lengths = lengths.tolist()  # one device sync, not one per chunk
        plan = plan_chunks(lengths, chunk_size, chunk_overhead(used.device))
        width = used.shape[1]
        cuts = []
        for idx in plan:
            rows = torch.tensor(idx, device=used.device)
            cuts.append({k: v[rows, : max(lengths[i] for i in idx)] for k, v in feats.items()})
        return forward_chunks(model, unwrapped if unwrapped is not None else model, [i for idx in plan for i in idx], cuts,
                              post=lambda out: torch.nn.functional.pad(out, (0, 0, 0, width - out.shape[1])))

    def compute_loss(self, model, unwrapped, loss_fn, batch, device) -> dict[str, torch.Tensor]:
        q = {k: v.to(device) for k, v in unwrapped.tokenize(batch["queries"], is_query=True).items()}
        d = {k: v.to(device) for k, v in unwrapped.tokenize(batch["docs"], is_query=False).items()}
        chunk = self.cfg["trainer"]["chunk_size"]
        q_vecs, d_vecs = self.embed(model, q, chunk, unwrapped), self.embed(model, d, chunk, unwrapped)
        false_negatives = batch["false_negatives"].to(device)
        if getattr(loss_fn, "in_batch_negatives", True):
            scores = unwrapped.score_matrix(q_vecs, q["token_mask"], d_vecs, d["token_mask"])
            return loss_fn.score_loss(scores, false_negatives)
        return loss_fn.score_loss(self._own_group_scores(unwrapped, q_vecs, q["token_mask"], d_vecs, d["token_mask"]),
                                  false_negatives)

    @staticmethod
    def _own_group_scores(unwrapped, q_vecs, q_mask, d_vecs, d_mask) -> torch.Tensor:
        """``[B, B*G]`` with only each query's own group scored (the rest is never read by the loss)."""
        from ragr.models.colbert import maxsim_pairs

        b, g = q_vecs.shape[0], d_vecs.shape[0] // q_vecs.shape[0]
        rep = torch.arange(b, device=q_vecs.device).repeat_interleave(g)
        own = maxsim_pairs(q_vecs[rep], q_mask[rep], d_vecs, d_mask, unwrapped.normalize_by_query_length).view(b, g)
        scores = own.new_full((b, b, g), torch.finfo(own.dtype).min)
        scores[torch.arange(b), torch.arange(b)] = own
        return scores.view(b, b * g)

    def evaluate(self, model, rows: list[dict[str, Any]], progress=None) -> dict[str, float]:
        from ragr.infer.colbert import evaluate_colbert

        return evaluate_colbert(model, rows, batch_size=32, progress=progress)
