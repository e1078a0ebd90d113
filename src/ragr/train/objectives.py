"""Training objectives: what a step computes from a family's outputs, independent of the family.

* :class:`Contrastive` — queries against their positives, hard negatives and in-batch documents
  (InfoNCE, MRL; gathered negatives; GradCache). Consumes ``vectors`` or ``multivectors``.
* :class:`GroupedScores` — each query's group of candidates scored as pairs, against hard labels
  (pointwise / pairwise / listwise) or teacher scores (distill-kl / -mse / -bce, llm-preference).
  Consumes ``pair_scores``, which every family produces.
* :class:`VectorTargets` — vectors regressed onto teacher vectors (Stella/Jasper stage 3). Consumes ``vectors``.

A loss names its objective (``objective``), what it consumes (``consumes``) and where its targets
come from (``targets``); :func:`objective_for` picks the objective, and the config check
(:mod:`ragr.config.checks`) refuses a family, loss or setting that cannot meet, before anything runs.
An objective gets the :class:`ragr.train.job.TrainingJob` it serves (config, family, model, console).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ragr.errors import DataError, UserError
from ragr.train.health import score_diagnostics, vector_diagnostics  # detached collapse signals ("health/...")


class Objective:
    """Base class: dataset, collation and the loss of one micro-batch."""

    name = ""

    def __init__(self, job) -> None:
        self.job = job
        self.cfg = job.cfg

    def build_dataset(self):
        raise NotImplementedError

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def compute_loss(self, fwd, loss_fn, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def example_costs(self, dataset) -> np.ndarray:
        raise UserError(f"trainer.max_tokens_per_batch: the {self.name} objective does not support it; "
                        "set trainer.batch_size instead")

    def check_loss(self, loss) -> None:
        """Refuse a built loss that does not fit the data (known only once the data is read)."""

    def extra_metrics(self, model, progress=None) -> dict[str, float]:
        """Metrics beyond the dev file's (distillation: agreement with the teacher)."""
        return {}

    def count_extra(self) -> int:
        return 0

    def _require_train(self, hint: str = "path/to/train.jsonl") -> str:
        path = self.cfg["data"].get("train")
        if not path:
            raise UserError(f"data.train is not set (pass data.train={hint})")
        return path


# ---- contrastive ----------------------------------------------------------------------------------
class Contrastive(Objective):
    """In-batch + hard-negative contrastive training on pair / triplet / scored data."""

    name = "contrastive"

    def build_dataset(self):
        from ragr.data.dataset import ContrastiveDataset
        from ragr.data.formats import load_training_file

        data = self.cfg["data"]
        index, fmt = load_training_file(self._require_train(), data.get("format", "auto"), columns=data.get("columns"))
        self.format = fmt
        if fmt != "triplet" and self.cfg["loss"].get("in_batch_negatives", True) is False:
            raise UserError(f"{data['train']} holds {fmt} data (no hard negatives) and loss.in_batch_negatives=false: "
                            "each query would be scored against its positive alone and the loss is 0 whatever the "
                            "model does; set loss.in_batch_negatives=true or give triplets")
        return ContrastiveDataset(index, data["num_negatives"], seed=self.cfg["seed"], use_negatives=fmt == "triplet")

    def collate(self, examples):
        from ragr.data.dataset import collate

        return collate(examples)

    def example_costs(self, dataset) -> np.ndarray:
        return self.job.family.example_costs(self.job.model, dataset)

    def check_loss(self, loss) -> None:
        """The compose-time rule again, on the built loss: a config made in code (never composed) that pairs a
        loss with a family it cannot consume is refused here, not with an AttributeError at the first step."""
        family, consumes = self.job.family, tuple(getattr(loss, "consumes", ()))
        if not set(consumes) & set(family.produces):
            raise UserError(f"loss={self.cfg['loss']['name']} does not apply to {family.name} models: it consumes "
                            f"{' or '.join(consumes) or 'nothing'}, the family produces {', '.join(family.produces)}")

    def compute_loss(self, fwd, loss_fn, batch):
        family = self.job.family
        false_negatives = batch["false_negatives"].to(fwd.device)
        keys = {"doc_keys": batch.get("doc_keys"), "pos_keys": batch.get("pos_keys")}
        if self.cfg["trainer"].get("grad_cache"):  # same loss and gradients, memory of one chunk (grad_cache.py)
            from ragr.train.grad_cache import cached_step

            return cached_step(fwd, family, loss_fn, batch["queries"], batch["docs"], (false_negatives,), keys)
        q = family.encode(fwd, batch["queries"], is_query=True)
        d = family.encode(fwd, batch["docs"], is_query=False)
        if isinstance(q, torch.Tensor):  # vectors: the loss takes them (dot products, MRL prefixes, gathering)
            return {**loss_fn(q.float(), d.float(), false_negatives, **keys), **vector_diagnostics(q, d)}
        if getattr(loss_fn, "in_batch_negatives", True):  # multivectors: the family scores, the loss takes scores
            return loss_fn.score_loss(family.similarity(fwd.model, q, d), false_negatives)
        return loss_fn.score_loss(family.own_group_scores(fwd.model, q, d), false_negatives)


# ---- grouped scores -------------------------------------------------------------------------------
RERANK_FORMATS = ("auto", "pointwise", "grouped", "triplet")


class GroupedScores(Objective):
    """Each query's group of candidates, scored as pairs by the family, against labels or teacher scores.

    Label data: :class:`ragr.data.rerank.RerankDataset` (``1 + data.num_negatives`` candidates).
    Teacher data (``ragr distill``): the teacher labels every candidate first (:mod:`ragr.train.teacher`,
    cached; or the scores already in the data), then :class:`ragr.data.distill.DistillDataset` groups them.
    """

    name = "grouped"

    def __init__(self, job) -> None:
        super().__init__(job)
        self.teacher = job.loss_targets == "teacher"
        self.format: str | None = None
        self.scores = None
        self.teacher_family: str | None = None
        self.agreement_set: tuple[list[str], list[list[str]], list[list[float]], str] | None = None

    # -- data --
    def build_dataset(self):
        return self._teacher_dataset() if self.teacher else self._label_dataset()

    def _label_dataset(self):
        from ragr.data.rerank import RerankDataset, load_rerank_training_file

        data = self.cfg["data"]
        path = self._require_train()
        fmt = data.get("format", "auto")
        if fmt not in RERANK_FORMATS:
            raise UserError(f"data.format={fmt} is not reranker data; use pointwise, grouped, triplet or auto")
        label_key = data.get("label_key", "label")
        index, self.format = load_rerank_training_file(path, fmt, label_key, data["num_negatives"], columns=data.get("columns"))
        return RerankDataset(index, self.format, data["num_negatives"], seed=self.cfg["seed"], label_key=label_key)

    def group_size(self) -> int:
        if self.format == "pointwise":
            return 1
        return self.cfg["distill"].get("group_size") or 1 + self.cfg["data"]["num_negatives"]

    def _teacher_dataset(self):
        from ragr.data.distill import DistillDataset, candidates, load_distill_file

        data = self.cfg["data"]
        path = self._require_train()
        label_key = data.get("label_key", "label")
        index, self.format = load_distill_file(path, data.get("format", "auto"), label_key, data["num_negatives"],
                                               columns=data.get("columns"))
        counts = np.zeros(len(index) + 1, dtype=np.int64)
        for i in range(len(index)):
            counts[i + 1] = len(candidates(index[i], self.format, label_key)[0])
        offsets = np.cumsum(counts)
        k = min(self.cfg["distill"]["agreement_queries"], len(index))
        teacher = self.cfg["teacher"]
        if teacher["family"] == "data":
            self.scores = self._data_scores(index, label_key, offsets)
            self.job.record("teacher", {"source": "data", "file": path, "format": self.format,
                                        "fields": label_key if self.format in ("pointwise", "grouped")
                                        else "scores | pos_scores/neg_scores"})
            self._agreement_from_train(index, label_key, k)
        else:
            self._label_with_teacher(index, label_key, offsets, k)
        self._check_scores_fit_the_loss()
        return DistillDataset(index, self.format, label_key, self.scores, self.group_size(), seed=self.cfg["seed"])

    def _label_with_teacher(self, index, label_key: str, offsets: np.ndarray, k: int) -> None:
        from pathlib import Path

        from ragr.data.distill import candidates
        from ragr.models.hub import resolve_model_path
        from ragr.data.sources import fingerprint
        from ragr.train.teacher import TeacherSession

        data, node = self.cfg["data"], self.cfg["teacher"]
        path = self.job.teacher_path or resolve_model_path(node["name_or_path"], key="teacher.name_or_path")
        cache_dir = Path(self.cfg["distill"].get("cache_dir") or Path(self.cfg["output_dir"]) / "teacher_scores")
        session = TeacherSession(node, path, self.cfg["distill"], cache_dir, self.job.console)
        self.teacher_family = session.family
        try:
            source = {"view": "train", "file": str(data["train"]), "sha256": fingerprint(data["train"])["sha256"],
                      "format": self.format, "label_key": label_key if self.format in ("pointwise", "grouped") else None}

            def train_groups():
                for i in range(len(index)):
                    rec = index[i]
                    yield rec["query"], candidates(rec, self.format, label_key)[0]

            self.scores, prov = session.scores(source, train_groups, offsets)
            provenance = {"source": "model", "train": prov}
            rows = self.job.eval_file_rows()
            if rows and self.cfg["distill"]["agreement_queries"] > 0:
                rows = rows[: self.cfg["distill"]["agreement_queries"]]
                eval_offsets = np.concatenate([[0], np.cumsum([len(r["positive"]) + len(r["negative"]) for r in rows])])
                eval_source = {"view": f"eval[:{len(rows)}]", "file": str(data["eval"]), "sha256": fingerprint(data["eval"])["sha256"]}
                groups = lambda: ((r["query"], r["positive"] + r["negative"]) for r in rows)  # noqa: E731
                eval_scores, provenance["eval"] = session.scores(eval_source, groups, eval_offsets)
                self.agreement_set = ([(r.get("prompt") or "") + r["query"] for r in rows],
                                      [r["positive"] + r["negative"] for r in rows],
                                      [eval_scores.of(i)[0].tolist() for i in range(len(rows))],
                                      f"{len(rows)} queries of {Path(data['eval']).name}")
            else:
                self._agreement_from_train(index, label_key, k)
        finally:
            session.close()
        self.job.record("teacher", provenance)

    def _data_scores(self, index, label_key: str, offsets: np.ndarray):
        from ragr.data.distill import TeacherScores, candidates

        raw = np.empty(int(offsets[-1]), dtype=np.float32)
        for i in range(len(index)):
            _, _, scores = candidates(index[i], self.format, label_key)
            if scores is None:
                rec = index[i]
                what = ("'scores' cover the positives only; give 'pos_scores' and 'neg_scores'" if "neg" in rec and "scores" in rec
                        else "no teacher scores ('scores' beside 'pos', or 'pos_scores' / 'neg_scores')")
                raise DataError(index.path, index.linenos[i], f"teacher=data needs a score for every candidate: {what}")
            raw[offsets[i] : offsets[i + 1]] = scores
        return TeacherScores(raw, raw.copy(), offsets)

    def _agreement_from_train(self, index, label_key: str, k: int) -> None:
        from ragr.data.distill import candidates, prompted

        if self.format == "pointwise":  # one candidate per line: one ranking over the first k pairs
            pairs = [(prompted(index[i]), index[i]["content"]) for i in range(k)]
            self.agreement_set = ([q for q, _ in pairs], [[d] for _, d in pairs],
                                  [self.scores.of(i)[0].tolist() for i in range(k)], f"{k} training pairs (pooled)")
            return
        queries, docs, teacher = [], [], []
        for i in range(k):
            rec = index[i]
            queries.append(prompted(rec))
            docs.append(candidates(rec, self.format, label_key)[0])
            teacher.append(self.scores.of(i)[0].tolist())
        self.agreement_set = (queries, docs, teacher, f"{k} training queries")

    def _check_scores_fit_the_loss(self) -> None:
        name = self.cfg["loss"]["name"]
        if name == "distill-bce" or (name == "distill-mse" and self.cfg["loss"].get("space") == "prob"):
            p = self.scores.prob
            if len(p) and (p.min() < 0 or p.max() > 1):
                raise UserError(f"loss={name} needs teacher probabilities in [0, 1], but the teacher scores range over "
                                f"[{p.min():.3g}, {p.max():.3g}]; use loss=distill-kl or loss=distill-mse")
        if self.format == "pointwise" and name in ("distill-kl", "llm-preference"):
            raise UserError(f"pointwise data has one candidate per query; loss={name} compares candidates of a query "
                            "(use loss=distill-bce or loss=distill-mse, or grouped / triplet data)")

    def check_loss(self, loss) -> None:
        if not self.teacher and self.format == "pointwise" and self.cfg["loss"]["name"] != "pointwise":
            raise UserError(f"pointwise data has one candidate per query; loss '{self.cfg['loss']['name']}' needs "
                            "groups (use loss=pointwise, or grouped / triplet data)")

    def loss_overrides(self) -> dict[str, Any]:
        """Temperatures left null take the natural scale of the student's and the teacher's scores."""
        from ragr.families import get_family
        from ragr.registry import families

        node = self.cfg["loss"]
        out: dict[str, Any] = {}
        if "temperature" in node and node["temperature"] is None:
            out["temperature"] = self.job.family.natural_temperature
        if "teacher_temperature" in node and node["teacher_temperature"] is None:
            fam = self.teacher_family
            out["teacher_temperature"] = get_family(fam).natural_temperature if fam and fam in families else 1.0
        return out

    def collate(self, examples):
        if self.teacher:
            from ragr.data.distill import collate_groups

            return collate_groups(examples)
        from ragr.data.rerank import add_in_batch_negatives, collate_rerank

        k = int(self.cfg["loss"].get("in_batch_negatives") or 0)
        if k and self.format != "pointwise":
            examples = add_in_batch_negatives(examples, k, self.cfg["seed"])
        batch = collate_rerank(examples)
        g = batch["labels"].shape[1]
        batch["pair_query_index"] = torch.arange(len(examples)).repeat_interleave(g)
        return batch

    # -- the step --
    def compute_loss(self, fwd, loss_fn, batch):
        pair = self.job.family.score_pairs(fwd, batch["queries"], batch["docs"], batch["pair_query_index"]).float()
        if not self.teacher:
            labels = batch["labels"].to(fwd.device)
            return {**loss_fn(pair.view(labels.shape), labels), **score_diagnostics(pair.view(labels.shape))}
        mask = batch["mask"].to(fwd.device)
        scores = torch.zeros(mask.numel(), device=fwd.device, dtype=pair.dtype)
        scores = scores.index_put((batch["flat"].to(fwd.device),), pair).view(mask.shape)
        teacher = batch["teacher_prob" if loss_fn.teacher_space == "prob" else "teacher_raw"].to(fwd.device)
        return {**loss_fn(scores, teacher, batch["labels"].to(fwd.device), mask), **score_diagnostics(scores, mask)}

    # -- agreement with the teacher --
    def count_extra(self) -> int:
        return sum(len(d) for d in self.agreement_set[1]) if self.agreement_set else 0

    def extra_metrics(self, model, progress=None) -> dict[str, float]:
        if not self.agreement_set:
            return {}
        from ragr.eval.agreement import agreement
        from ragr.eval.rerank import score_groups

        queries, docs, teacher, _ = self.agreement_set
        was_training = model.training
        student = score_groups(self.job.family.scorer(model), queries, docs, batch_size=64, progress=progress)
        model.train(was_training)
        if self.format == "pointwise" and all(len(d) == 1 for d in docs):
            student, teacher = [[s[0] for s in student]], [[t[0] for t in teacher]]
        return agreement(student, teacher)


# ---- vectors --------------------------------------------------------------------------------------
class VectorTargets(Objective):
    """Stella/Jasper stage 3: the family's vectors (a Dense head to the teacher width) learn teacher vectors."""

    name = "vectors"

    def __init__(self, job) -> None:
        super().__init__(job)
        self.vectors: np.ndarray | None = None
        self.texts_index = None

    def build_dataset(self):
        from ragr.data.sources import index_records
        from ragr.data.vectors import VectorDataset, open_vectors, sidecar
        from ragr.infer.vectors import text_checker

        path = self._require_train('TEXTS.jsonl, one {"text": ...} per line')
        self.texts_index = index_records(path, text_checker(path), columns=self.cfg["data"].get("columns"))
        node = self.cfg["teacher"]
        self.vectors = open_vectors(node["name_or_path"], len(self.texts_index), path)
        self.job.record("teacher", {"source": "vectors", "file": str(node["name_or_path"]),
                                    "shape": list(self.vectors.shape), **sidecar(node["name_or_path"])})
        return VectorDataset(self.texts_index, self.vectors)

    def model_overrides(self) -> dict[str, Any]:
        width = int(self.vectors.shape[1])
        dense_dim = self.job.model_node.get("dense_dim")
        if dense_dim not in (None, width):
            raise UserError(f"student.dense_dim={dense_dim} but the teacher vectors have {width} dimensions; "
                            f"leave student.dense_dim=null (a Dense head to {width} is added) or set it to {width}")
        return {"dense_dim": width}

    def check_model(self, model) -> None:
        width = int(self.vectors.shape[1])
        if model.dim != width:
            raise UserError(f"the student's output has {model.dim} dimensions (its folder's Dense head) but the teacher "
                            f"vectors have {width}; start from a model without a Dense head")

    def collate(self, examples):
        return {"queries": [e["text"] for e in examples],
                "vectors": torch.from_numpy(np.stack([e["vector"] for e in examples]).astype(np.float32))}

    def compute_loss(self, fwd, loss_fn, batch):
        emb = self.job.family.encode(fwd, batch["queries"], is_query=False)
        return loss_fn(emb.float(), batch["vectors"].to(fwd.device))

    def agreement_texts(self) -> tuple[list[str], np.ndarray]:
        from ragr.data.vectors import VectorDataset

        k = min(self.cfg["distill"]["agreement_queries"], len(self.texts_index))
        return [VectorDataset.text_of(self.texts_index[i]) for i in range(k)], np.array(self.vectors[:k], dtype=np.float32)

    def count_extra(self) -> int:
        return len(self.agreement_texts()[0])

    def extra_metrics(self, model, progress=None) -> dict[str, float]:
        import torch.nn.functional as F

        from ragr.eval.agreement import spearman

        texts, teacher = self.agreement_texts()
        if not texts:
            return {}
        s = F.normalize(model.encode(texts, is_query=False, batch_size=64, progress=progress).float(), dim=-1)
        t = F.normalize(torch.from_numpy(teacher), dim=-1)
        metrics = {"teacher_cosine": float((s * t).sum(-1).mean())}
        if len(texts) >= 3:
            i, j = torch.triu_indices(len(texts), len(texts), offset=1)
            rho = spearman((s @ s.T)[i, j].numpy(), (t @ t.T)[i, j].numpy())
            if rho is not None:
                metrics["teacher_sim_spearman"] = rho
        return metrics


OBJECTIVES: dict[str, type[Objective]] = {"contrastive": Contrastive, "grouped": GroupedScores, "vectors": VectorTargets}


def objective_for(loss_cls: type) -> type[Objective]:
    """The objective that feeds ``loss_cls`` (its ``objective`` attribute)."""
    name = getattr(loss_cls, "objective", None)
    if name not in OBJECTIVES:
        raise UserError(f"loss {loss_cls.__name__} names no training objective (objective = one of {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]


from ragr.train.sparse_objective import SparseGroupedScores  # noqa: E402 - sparse distillation (issue 15)

OBJECTIVES["grouped_sparse"] = SparseGroupedScores
