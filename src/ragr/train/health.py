"""Training health, on for every run: what the engine checks each step and says at the end.

* **Non-finite loss or gradients.** Every optimizer step, each rank looks at its loss terms (and, with
  ``trainer.max_grad_norm`` clipping, the gradient norm ``clip_grad_norm_`` returns) and the ranks agree in
  one small ``all_reduce(MAX)``: if any rank saw a NaN or inf, every rank stops with the same
  :class:`~ragr.errors.UserError` *before* the optimizer step, so nothing of that step is applied to a
  saved checkpoint, ``model/`` is not written and ``trainer.resume=auto`` continues from the last complete
  checkpoint. (Under fp16 loss scaling an inf gradient norm is the scaler's business: it skips the step.)
* **Collapse.** The objectives add detached diagnostics to a step's outputs (keys starting with
  ``health/``, from :func:`score_diagnostics` and :func:`vector_diagnostics`): the per-query spread of the
  scores the loss sees, and the mean pairwise cosine of a batch's embeddings. Dev evaluations add
  ``score_spread`` (the same spread over each dev query's candidates, every family). Near zero spread or a
  mean cosine near 1 is reported once, with the step, as a warning (console, ``metrics.jsonl`` event
  ``collapse``, the summary and ``eval.json``). Not a stop.
* **Verdict.** With dev metrics before and after, the summary says in plain words whether training made
  the model better or worse on dev (``trainer.best_metric``, by how much), and names ``best/`` when
  ``trainer.eval_every`` kept one. ``model/`` is always the last step.

The engine's hooks are :class:`Monitor`'s methods; everything here runs on every rank except the
reporting (main process).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ragr.errors import UserError

PREFIX = "health/"
SCORE_SPREAD = PREFIX + "score_spread"
EMBEDDING_COSINE = PREFIX + "embedding_cosine"
#: collapsed: the mean per-query score std is below this fraction of max(1, mean |score|)
SPREAD_TOL = 1e-4
#: collapsed: the mean pairwise cosine of a batch's embeddings is above 1 - this
COSINE_TOL = 1e-4
#: "worse" / "better": the dev metric moved by more than this
CHANGE_TOL = 5e-4
PRETTY = {"map": "MAP", "mrr": "MRR", "ndcg": "nDCG", "recall": "Recall", "p": "P"}


# ---- diagnostics (objectives call these; detached, no device sync) ---------------------------------------
@torch.no_grad()
def score_diagnostics(scores: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"health/score_spread": s}`` for ``scores`` ``[queries, candidates]`` (``mask``: real candidates).

    ``s`` is the mean over queries (with two candidates or more) of the standard deviation of a query's
    candidate scores, divided by ``max(1, mean |score|)``; NaN when no query has two candidates. Empty
    when every group has one candidate (pointwise data).
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        return {}
    s = scores.detach().float()
    m = torch.ones_like(s, dtype=torch.bool) if mask is None else mask.to(s.device).bool()
    w = m.float()
    n = w.sum(1)
    keep = n >= 2
    mean = (s * w).sum(1) / n.clamp(min=1)
    std = (((s - mean[:, None]) ** 2 * w).sum(1) / n.clamp(min=1)).sqrt()
    spread = (std * keep).sum() / keep.sum().clamp(min=1)
    scale = ((s.abs() * w).sum() / w.sum().clamp(min=1)).clamp(min=1.0)
    nan = torch.full_like(spread, float("nan"))
    return {SCORE_SPREAD: torch.where(keep.any(), spread / scale, nan)}


@torch.no_grad()
def vector_diagnostics(*vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"health/embedding_cosine": c}``: the mean cosine over all pairs of distinct rows of ``vectors``
    (concatenated), from ``|sum of unit vectors|^2`` (exact, O(n d))."""
    rows = [v.detach().float().reshape(v.shape[0], -1) for v in vectors if v.dim() >= 1 and v.shape[0]]
    if not rows:
        return {}
    u = torch.nn.functional.normalize(torch.cat(rows), dim=-1)
    n = u.shape[0]
    if n < 2:
        return {}
    total = u.sum(0)
    return {EMBEDDING_COSINE: ((total * total).sum() - (u * u).sum()) / (n * (n - 1))}


def group_spread(groups: list[list[float]]) -> float | None:
    """:func:`score_diagnostics` of ragged score groups (dev evaluation): None when no group has two scores."""
    import numpy as np

    stds, total, count = [], 0.0, 0
    for g in groups:
        a = np.asarray(g, dtype=np.float64)
        total, count = total + float(np.abs(a).sum()), count + len(a)
        if len(a) >= 2:
            stds.append(float(a.std()))
    if not stds:
        return None
    return float(np.mean(stds)) / max(1.0, total / count)


def dev_metrics(scorer, rows, batch_size: int = 64, progress=None) -> dict[str, float]:
    """The rank metrics of :func:`ragr.eval.rerank.evaluate` plus ``score_spread`` of the dev scores."""
    from ragr.eval.rerank import evaluate_scores

    metrics, scores = evaluate_scores(scorer, rows, batch_size=batch_size, progress=progress)
    spread = group_spread(scores)
    if spread is not None:
        metrics["score_spread"] = spread
    return metrics


def collapse_signal(values: dict[str, float]) -> tuple[str, float, str] | None:
    """``(signal, value, what)`` when ``values`` (diagnostics or dev metrics) show a collapse, else None."""
    for key in (SCORE_SPREAD, "score_spread"):
        v = values.get(key)
        if v is not None and math.isfinite(v) and v <= SPREAD_TOL:
            return ("score_spread", v, f"scores collapsed at step {{step}}: per-query score spread {v:.1e} (every "
                    "candidate of a query gets nearly the same score, so the model no longer ranks)")
    v = values.get(EMBEDDING_COSINE)
    if v is not None and math.isfinite(v) and v >= 1 - COSINE_TOL:
        return ("embedding_cosine", v, f"embeddings collapsed at step {{step}}: mean pairwise cosine {v:.6f} over a "
                "batch (every text gets nearly the same vector)")
    return None


def pretty(metric: str) -> str:
    """``ndcg@10`` -> ``nDCG@10``."""
    base, at, k = metric.partition("@")
    return PRETTY.get(base, base) + at + k


# ---- the engine's monitor ----------------------------------------------------------------------------
class Monitor:
    """One run's health: the engine calls :meth:`micro_step`, :meth:`end_step` (every rank, every step),
    :meth:`eval_done`, :meth:`log_values` and :meth:`finish`."""

    def __init__(self, engine) -> None:
        from ragr.device import mixed_precision

        self.engine, self.acc, self.t = engine, engine.accelerator, engine.t
        self.run_dir: Path = engine.run_dir
        self.fp16 = mixed_precision(self.t["precision"]) == "fp16"
        self._bad: dict[str, float] = {}       # this step's non-finite loss terms -> a value
        self._terms: set[str] = set()
        self._step_health: dict[str, list[float]] = {}
        self._window_health: dict[str, list[float]] = {}
        self.collapse: dict[str, Any] | None = None   # the first collapse seen
        self.last_check: dict[str, Any] | None = None  # the latest step checked: {"step", "collapsed"}
        self.warnings: list[str] = []
        self._warned: set[str] = set()  # collapse signals already reported (each once)

    # -- every micro-step --
    def micro_step(self, out: dict[str, torch.Tensor], window: dict[str, float], a_steps: int) -> None:
        """Add a micro-step's loss terms to ``window`` (as the engine logs them); keep the health diagnostics."""
        for k, v in out.items():
            x = float(v.detach())
            if k.startswith(PREFIX):
                self._step_health.setdefault(k, []).append(x)
                continue
            self._terms.add(k)
            if not math.isfinite(x):
                self._bad.setdefault(k, x)
            window[k] = window.get(k, 0.0) + x / a_steps

    # -- every optimizer step, every rank, before optimizer.step() --
    def end_step(self, step: int, grad_norm: Any = None) -> None:
        """Stop every rank (UserError) when any rank saw a non-finite loss or gradient norm at ``step``."""
        acc = self.acc
        check_grad = grad_norm is not None and acc.scaler is None and not self.fp16
        norm = float(grad_norm) if check_grad else 0.0
        terms = sorted(self._terms)
        world, rank = acc.num_processes, acc.process_index
        flags = [1.0 if t in self._bad else 0.0 for t in terms]
        flags += [float(world - rank) if self._bad else 0.0, float(world - rank) if not math.isfinite(norm) else 0.0]
        if world > 1:
            import torch.distributed as dist

            flat = torch.tensor(flags, dtype=torch.float32, device=acc.device)
            dist.all_reduce(flat, op=dist.ReduceOp.MAX)
            flags = flat.tolist()
        *term_flags, loss_rank, grad_rank = flags
        values, health = dict(self._bad), self._step_health
        self._bad, self._terms, self._step_health = {}, set(), {}
        if loss_rank or grad_rank:
            bad_terms = [t for t, f in zip(terms, term_flags) if f]
            self._stop(step, bad_terms, values, world - int(loss_rank or grad_rank), not loss_rank, norm)
        means = {k: sum(v) / len(v) for k, v in health.items() if v}
        for k, v in means.items():
            self._window_health.setdefault(k, []).append(v)
        if acc.is_main_process and means:
            self._check_collapse(step, means, "train")

    def _stop(self, step: int, terms: list[str], values: dict[str, float], rank: int, grad_only: bool,
              norm: float) -> None:
        from ragr.train.rundir import complete_checkpoints

        where = f" on rank {rank}" if self.acc.num_processes > 1 else ""
        if grad_only:
            what = f"the gradient norm is {norm if rank == self.acc.process_index else 'not finite'}{where}"
        else:
            shown = ", ".join(f"'{t}' = {values[t]}" if t in values else f"'{t}'" for t in terms)
            what = f"the loss is not finite{where} (term {shown})" if len(terms) == 1 else \
                f"the loss is not finite{where} (terms {shown})"
        ckpts = complete_checkpoints(self.run_dir)
        if ckpts:
            last_step, path = ckpts[-1]
            kept = (f"the last complete checkpoint, {path} (step {last_step}), is intact: continue from it with "
                    f"trainer.resume=auto output_dir={self.run_dir} (with another trainer.lr or trainer.precision, "
                    "add trainer.resume_force=true)")
        else:
            kept = (f"no checkpoint was saved before it (trainer.save_every={self.t.get('save_every')}; set "
                    "trainer.save_every=N to keep some)")
        t = self.t
        causes = [f"a learning rate too high for this model (trainer.lr={t['lr']:g}: try {t['lr'] / 10:g})"]
        if self.fp16:
            causes.append(f"fp16 overflow (trainer.precision={t['precision']}: try bf16 or fp32)")
        if not t.get("max_grad_norm"):
            causes.append("no gradient clipping (trainer.max_grad_norm is off: try 1.0)")
        causes.append("extreme loss settings (a very small loss.temperature)")
        message = (f"training stopped at step {step}: {what}. Nothing of step {step} was saved and model/ was not "
                   f"written; {kept}. Likely causes: {'; '.join(causes)}.")
        self.engine._log({"step": step, "event": "nonfinite", "terms": terms, "grad_norm_only": grad_only,
                          "rank": rank, "message": message})
        raise UserError(message)

    # -- collapse --
    def _check_collapse(self, step: int, values: dict[str, float], source: str) -> None:
        found = collapse_signal(values)
        self.last_check = {"step": step, "source": source, "collapsed": found is not None}
        if found is None or found[0] in self._warned:
            return
        signal, value, text = found
        self._warned.add(signal)
        message = text.format(step=step) + ("" if source == "train" else f" on dev ({source.removeprefix('eval_')})")
        if source != "eval_before":
            message += f"; usual cause: a learning rate too high (trainer.lr={self.t['lr']:g})"
        if self.collapse is None:
            self.collapse = {"step": step, "signal": signal, "value": value, "source": source, "message": message}
        self.warnings.append(message)
        from rich.markup import escape

        self.engine.console.print(f"[yellow]warning:[/] {escape(message)}")
        self.engine._log({"step": step, "event": "collapse", "signal": signal, "value": value, "source": source})

    def eval_done(self, step: int, tag: str, metrics: dict[str, float] | None) -> None:
        """Main process, after a dev evaluation."""
        if metrics:
            self._check_collapse(step, metrics, f"eval_{tag}")

    def log_values(self) -> dict[str, float]:
        """The health diagnostics averaged since the last log record (this rank's; empty when none)."""
        out = {k: sum(v) / len(v) for k, v in self._window_health.items() if v}
        self._window_health = {}
        return out

    # -- the end of the run --
    def finish(self, results: dict[str, Any], steps: int) -> dict[str, Any]:
        """Main process: ``{"verdict": {...} | None, "warnings": [...]}`` (also logged)."""
        verdict = self.verdict(results.get("before"), results.get("after"), results.get("best"), steps)
        warnings = list(self.warnings)
        if self.collapse is not None and self.last_check is not None:
            state = ("still collapsed at the last check" if self.last_check["collapsed"]
                     else "not collapsed at the last check")
            warnings = [w + (f" ({state}, step {self.last_check['step']})" if w == self.collapse["message"] else "")
                        for w in warnings]
        if verdict is not None:
            self.engine._log({"step": steps, "event": "verdict", **{k: v for k, v in verdict.items()}})
        return {"verdict": verdict, "warnings": warnings, "collapse": self.collapse}

    def verdict(self, before: dict | None, after: dict | None, best: dict | None, steps: int) -> dict[str, Any] | None:
        """Whether training helped on dev, in plain words (None without before and after)."""
        if not before or not after:
            return None
        from ragr.eval.rerank import HEADLINE

        name = self.t.get("best_metric") or "ndcg@10"
        common = [m for m in HEADLINE if m in before and m in after]
        if name not in before or name not in after:
            if not common:
                return None
            name = "ndcg@10" if "ndcg@10" in common else common[0]
        b, a = float(before[name]), float(after[name])
        change = a - b
        status = "worse" if change < -CHANGE_TOL else "better" if change > CHANGE_TOL else "unchanged"
        label = pretty(name)
        if status == "worse":
            also = [f"{pretty(m)} {before[m]:.3f} -> {after[m]:.3f}" for m in common
                    if m != name and after[m] < before[m] - CHANGE_TOL]
            message = (f"{label} fell from {b:.3f} to {a:.3f} ({change:+.3f}): training made the model worse on dev"
                       + (f" (also {', '.join(also)})" if also else "") + f". model/ holds the last step ({steps})")
        elif status == "better":
            message = f"{label} rose from {b:.3f} to {a:.3f} ({change:+.3f}) on dev"
        else:
            message = f"{label} did not change on dev ({b:.3f} -> {a:.3f})"
        use = "model/"
        if best is not None and self.t.get("eval_every"):
            bstep, bval = best["step"], float(best["value"])
            when = "step 0, the model before training" if bstep == 0 else f"step {bstep}"
            if bstep != steps and (status == "worse" or bval > a + CHANGE_TOL):
                use = "best/"
                message += (f"; best/ ({when}, {pretty(best['metric'])} {bval:.3f}) is the one to use: "
                            f"{self.run_dir / 'best'}")
        elif status == "worse":
            message += (f"; the model before training scored higher. Train again with a lower trainer.lr (now "
                        f"{self.t['lr']:g}) or fewer steps; trainer.eval_every=N keeps the best dev checkpoint in best/")
        return {"status": status, "metric": name, "before": b, "after": a, "change": change, "use": use,
                "message": message}


def summary_lines(results: dict[str, Any] | None) -> list[str]:
    """Console lines (rich markup) for a run's health: warnings, then the verdict."""
    from rich.markup import escape

    health = (results or {}).get("health") or {}
    lines = [f"[yellow]warning:[/] {escape(w)}" for w in health.get("warnings") or []]
    verdict = health.get("verdict")
    if verdict:
        text = escape(verdict["message"])
        lines.append(f"[bold yellow]{text}[/]" if verdict["status"] == "worse" else text)
    return lines
