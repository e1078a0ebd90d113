"""The training engine: one loop on accelerate for every model family.

Step ``s`` (an optimizer step) of a run is fully determined by ``(seed, s)``: its epoch is
``s // steps_per_epoch`` and its micro-batches are fixed slices of that epoch's seeded permutation.
A resumed run therefore continues on exactly the data it would have seen, and with the RNG
states restored from the checkpoint, reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragr.device import mixed_precision
from ragr.errors import UserError
from ragr.families.forward import make_forward
from ragr.models.attention import shape_stable_attention
from ragr.train.rundir import (
    STATE_FILE,
    atomic_write_text,
    check_resume,
    find_resume_point,
    replace_dir,
    rotate_checkpoints,
    truncate_metrics,
    write_manifest,
)
from ragr.ui import Console


def _optimizer(model: torch.nn.Module, t: dict[str, Any], fused: bool = True) -> torch.optim.Optimizer:
    """AdamW (or SGD) with no weight decay on biases and norms.

    AdamW is the fused kernel where this torch has one for the parameters' device (4.4x faster than
    the per-tensor loop on a CPU, see docs/BENCHMARKS.md); ``fused=False`` keeps the plain one (DeepSpeed
    wraps the optimizer itself).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"])
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=t["lr"], fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the kernel
            pass
    return torch.optim.AdamW(groups, lr=t["lr"])


class Engine:
    """Train ``task`` (a :class:`ragr.train.job.Job`) as described by the resolved config ``cfg`` into
    ``cfg["output_dir"]``."""

    def __init__(self, cfg: dict[str, Any], task, quiet: bool = False) -> None:
        from ragr.device import quiet_deepspeed_probe

        quiet_deepspeed_probe()
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        AcceleratorState._reset_state()  # a second run in one process may use another precision
        self.cfg, self.task, self.t = cfg, task, cfg["trainer"]
        self.run_dir = Path(cfg["output_dir"])
        # DDP: backbones carry weights the loss never uses (BERT's pooler under mean pooling)
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.accelerator = Accelerator(mixed_precision=mixed_precision(self.t["precision"]), kwargs_handlers=[ddp])
        if self._deepspeed() and self._sharded():
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()  # ZeRO-3: build models whole (not partitioned at load); prepare() shards
        self.console = Console(quiet=quiet or not self.accelerator.is_main_process)
        self.tb = None

    # ---- setup --------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> Path | None:
        from ragr.config import to_yaml

        acc = self.accelerator
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resume_from = find_resume_point(self.run_dir, self.t.get("resume"))
        if resume_from is not None:
            check_resume(self.run_dir, self.cfg)  # every rank: each reports the same refusal
            if acc.is_main_process:
                truncate_metrics(self.run_dir, json.loads((resume_from / STATE_FILE).read_text())["step"])
        if acc.is_main_process:
            atomic_write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
            files = [self.cfg["data"].get("train"), self.cfg["data"].get("eval")]
            write_manifest(self.run_dir, self.cfg, [f for f in files if f],
                           {"resumed_from": str(resume_from) if resume_from else None})
        return resume_from

    def _schedule(self, n_examples: int, dataset=None) -> tuple[int, int]:
        """(steps_per_epoch, total optimizer steps)."""
        if self.t.get("max_tokens_per_batch") is not None and dataset is not None:  # token-budget micro-batches
            plan = self._token_plan(dataset)
            return plan.steps_per_epoch, self.t["max_steps"] or plan.total_steps(self.t["epochs"])
        world, b, a = self.accelerator.num_processes, self.t["batch_size"], self.t["grad_accum"]
        micro = max(1, n_examples // (b * world))
        spe = max(1, micro // a)
        total = self.t["max_steps"] if self.t.get("max_steps") else spe * self.t["epochs"]
        return spe, total

    def _token_plan(self, dataset):
        """trainer.max_tokens_per_batch: see ragr.train.token_budget (packs fixed by (seed, epoch))."""
        from ragr.train.token_budget import TokenBudgetPlan

        budget = self.t["max_tokens_per_batch"]
        if budget < 1:
            raise UserError(f"trainer.max_tokens_per_batch must be >= 1, got {budget}")
        self._plan = TokenBudgetPlan(self.task.example_costs(dataset), budget, self.cfg["seed"], self.accelerator.num_processes,
                                     self.t["grad_accum"])
        return self._plan

    def _micro_batch(self, dataset, step: int, a: int, spe: int) -> list[int]:
        if getattr(self, "_plan", None) is not None:
            epoch, idx = self._plan.micro_batch(step, a, self.accelerator.process_index)
            dataset.set_epoch(epoch)
            return idx
        world, rank, b = self.accelerator.num_processes, self.accelerator.process_index, self.t["batch_size"]
        epoch = step // spe
        perm = np.random.default_rng([self.cfg["seed"], epoch]).permutation(len(dataset))
        mb = (step % spe) * self.t["grad_accum"] + a
        start = mb * b * world + rank * b
        idx = perm[start : start + b]
        if len(idx) == 0:  # fewer examples than one batch: every step uses them all
            idx = perm[rank::world][:b]
        dataset.set_epoch(epoch)
        return [int(i) for i in idx]

    # ---- distribution -------------------------------------------------------------------------
    def _deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def _sharded(self) -> bool:
        """ZeRO-3 or FSDP: no rank holds the whole model, so evaluation and saving gather it first."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP:
            return True
        return self._deepspeed() and acc.state.deepspeed_plugin.zero_stage == 3

    def _full_model(self, model):
        """The trained model, whole, on the main process (None elsewhere); every rank joins the gather."""
        acc = self.accelerator
        if not self._sharded():
            return acc.unwrap_model(model) if acc.is_main_process else None
        state = acc.get_state_dict(model)  # full (16-bit under ZeRO-3) weights on the main process
        if not acc.is_main_process:
            return None
        whole = self.task.build_model()
        result = whole.load_state_dict(state, strict=False)
        params = {name for name, _ in whole.named_parameters()}
        missing = [k for k in result.missing_keys if k in params]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"gathered weights do not fit the model: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        return whole.to(acc.device)

    def _mean_across_ranks(self, values: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1 or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.accelerator.device)
        return dict(zip(values, self.accelerator.reduce(t, reduction="mean").tolist()))

    # ---- checkpoints --------------------------------------------------------------------------
    def _save_checkpoint(self, step: int, epoch: int) -> None:
        acc = self.accelerator
        root = self.run_dir / "checkpoints"
        final = root / f"step-{step}"
        tmp = root / f".step-{step}.tmp"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, "epoch": epoch, "complete": True}))
            replace_dir(tmp, final)
            rotate_checkpoints(self.run_dir, self.t["save_total_limit"])
        acc.wait_for_everyone()

    # ---- logging ------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def _evaluate(self, model, rows, tag: str, step: int) -> dict[str, float] | None:
        if rows is None or not self.accelerator.is_main_process:
            return None
        with self.console.progress(f"eval ({tag})", self.task.count_eval_items(rows)) as advance:
            metrics = self.task.evaluate(self.accelerator.unwrap_model(model), rows, progress=advance)
        self._log({"step": step, "event": f"eval_{tag}", **{f"eval/{k}": v for k, v in metrics.items()}})
        self.monitor.eval_done(step, tag, metrics)  # collapse on dev (ragr.train.health)
        return metrics

    # ---- evaluation during training (trainer.eval_every) and the best model -------------------------
    def _keep_best(self, model, metrics: dict[str, float] | None, step: int) -> None:
        """Main process: save ``model`` to ``run_dir/best/`` when ``metrics`` beat the best so far.

        ``run_dir/best/`` is a saved model (same layout as ``model/``) plus ``best.json`` (step, metric,
        value, all metrics); it lives outside ``checkpoints/``, so rotation never removes it.
        """
        if not metrics or not self.t.get("eval_every") or not self.accelerator.is_main_process:
            return
        from ragr.errors import did_you_mean

        name = self.t.get("best_metric") or "ndcg@10"
        if name not in metrics:
            names = [k for k in metrics if not k.startswith("num_")]
            raise UserError(f"trainer.best_metric={name} is not a dev metric{did_you_mean(name, names)}; "
                            f"choices: {', '.join(names)}")
        value = float(metrics[name])
        if self.best is not None and value <= self.best["value"]:
            return
        tmp = self.run_dir / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.task.save(self.accelerator.unwrap_model(model), tmp)
        record = {"step": step, "metric": name, "value": value, "metrics": metrics}
        (tmp / "best.json").write_text(json.dumps(record, indent=2))
        from ragr.train.card import write_model_card  # README.md beside the weights; never raises
        write_model_card(tmp, self.cfg, metrics=metrics, step=step, name="best")
        replace_dir(tmp, self.run_dir / "best")
        self.best = record
        self._log({"step": step, "event": "best", "metric": name, "value": value})

    def _periodic_eval(self, model, rows, step: int) -> None:
        """``trainer.eval_every``: evaluate on the dev data (gathering a sharded model first), keep the best."""
        whole = self._full_model(model) if self._sharded() else model  # collective under ZeRO-3 / FSDP
        metrics = self._evaluate(whole, rows, "step", step)  # main process only
        self._keep_best(whole, metrics, step)
        self.accelerator.wait_for_everyone()
        model.train()

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except KeyboardInterrupt:
            self.console.print(f"[yellow]interrupted[/]: complete checkpoints in {self.run_dir / 'checkpoints'} are kept; "
                               f"continue with trainer.resume=auto output_dir={self.run_dir}")
            raise

    def _run(self) -> dict[str, Any]:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from ragr.train.health import Monitor
        from ragr.train.watchdog import StepWatchdog

        acc, t = self.accelerator, self.t
        set_seed(self.cfg["seed"])
        self.monitor = monitor = Monitor(self)  # non-finite stop, collapse, verdict (ragr.train.health)
        resume_from = self._prepare_run_dir()
        if t.get("tensorboard") and acc.is_main_process:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("trainer.tensorboard=true needs the tensorboard package (pip install 'ragr[tensorboard]')") from None
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))

        dataset = self.task.build_dataset()
        model = self.task.build_model()
        if t.get("gradient_checkpointing"):
            backbone = getattr(model, "backbone", model)
            if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5
                backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            elif hasattr(backbone, "gradient_checkpointing_enable"):
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                raise UserError(f"trainer.gradient_checkpointing: {type(backbone).__name__} does not support it")
        loss_fn = self.task.build_loss()
        eval_rows = self.task.eval_rows()
        if t.get("eval_every") and eval_rows is None:
            raise UserError("trainer.eval_every needs dev data: set data.eval=path/to/dev.jsonl")
        best_file = self.run_dir / "best" / "best.json"
        self.best = json.loads(best_file.read_text()) if resume_from is not None and best_file.is_file() else None
        spe, total = self._schedule(len(dataset), dataset)
        results: dict[str, Any] = {"run_dir": str(self.run_dir)}
        sharded, deepspeed = self._sharded(), self._deepspeed()
        if sharded and t.get("eval_before") and resume_from is None:  # once prepared, no rank holds the model
            if acc.is_main_process:
                model.to(acc.device)
            results["before"] = self._evaluate(model, eval_rows, "before", 0)
            self._keep_best(model, results["before"], 0)
            acc.wait_for_everyone()
        if deepspeed:  # no dataloader goes through prepare(): tell DeepSpeed the per-rank batch
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = t["batch_size"]
        optimizer = _optimizer(model, t, fused=not deepspeed)
        model, optimizer = acc.prepare(model, optimizer)
        # on the prepared optimizer: DeepSpeed may replace the inner one (CPU Adam when offloading)
        scheduler = get_scheduler(t["scheduler"] if t["scheduler"] != "constant" else "constant_with_warmup",
                                  optimizer, num_warmup_steps=int(t["warmup_ratio"] * total), num_training_steps=total)
        acc.register_for_checkpointing(scheduler)

        start = 0
        if resume_from is not None:
            acc.load_state(str(resume_from))
            start = json.loads((resume_from / STATE_FILE).read_text())["step"]
            self.console.print(f"resumed from {resume_from} (step {start})")

        if t.get("eval_before") and start == 0 and not sharded:
            results["before"] = self._evaluate(model, eval_rows, "before", 0)
            self._keep_best(model, results["before"], 0)

        unwrapped = acc.unwrap_model(model)
        fwd = make_forward(model, unwrapped, acc.device, t)  # trainer.forward: chunked / packed / bucketed
        watchdog = StepWatchdog(self.cfg["launcher"].get("timeout_s"), acc.process_index, acc.num_processes)
        model.train()
        window: dict[str, float] = {}
        n_window, t0, seen = 0, time.perf_counter(), 0
        a_steps = t["grad_accum"]
        last_saved = start
        with self.console.progress("train", total, completed=start) as advance, watchdog:
            for step in range(start, total):
                epoch = step // spe
                if hasattr(loss_fn, "set_step"):  # losses with a step schedule (SPLADE's FLOPS warm-up); exact on resume
                    loss_fn.set_step(step, total)
                for a in range(a_steps):
                    batch = self.task.collate([dataset[i] for i in self._micro_batch(dataset, step, a, spe)])
                    last = a == a_steps - 1
                    if deepspeed:  # DeepSpeed steps at the boundary and divides by grad_accum itself
                        acc.sync_gradients = last
                    sync = nullcontext() if last else acc.no_sync(model)
                    with watchdog.step(step + 1, a), sync, acc.autocast(), shape_stable_attention(acc.device):
                        out = self.task.compute_loss(fwd, loss_fn, batch)
                        acc.backward(out["loss"] if deepspeed else out["loss"] / a_steps)
                    monitor.micro_step(out, window, a_steps)  # window[k] += loss terms / a_steps
                    seen += len(batch["queries"]) * acc.num_processes
                with watchdog.step(step + 1, "optimizer"):
                    norm = acc.clip_grad_norm_(model.parameters(), t["max_grad_norm"]) if t.get("max_grad_norm") else None
                    monitor.end_step(step + 1, norm)  # collective; a NaN/inf on any rank stops every rank here
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                n_window += 1
                advance(1)
                done = step + 1
                if done % t["log_every"] == 0 or done == total:
                    elapsed = time.perf_counter() - t0
                    means = self._mean_across_ranks({k: v / n_window for k, v in window.items()})
                    record = {"step": done, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                              **means, **monitor.log_values(), "samples_per_s": seen / max(elapsed, 1e-9)}
                    self._log(record)
                    self.console.progress_note(f"loss {record['loss']:.4f}")
                    window, n_window, t0, seen = {}, 0, time.perf_counter(), 0
                if t["save_every"] and done % t["save_every"] == 0 and done != total:
                    self._save_checkpoint(done, epoch)
                    last_saved = done
                if t.get("eval_every") and done % t["eval_every"] == 0 and not (done == total and t.get("eval_after")):
                    self._periodic_eval(model, eval_rows, done)
        if total > last_saved:
            self._save_checkpoint(total, (total - 1) // spe if total else 0)

        final = self._full_model(model)  # collective under ZeRO-3 / FSDP; None off the main process
        if t.get("eval_after"):
            results["after"] = self._evaluate(final if sharded else model, eval_rows, "after", total)
            self._keep_best(final if sharded else model, results["after"], total)
        if acc.is_main_process:
            tmp = self.run_dir / ".model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.task.save(final, tmp)
            from ragr.train.card import write_model_card  # README.md beside the weights; never raises
            write_model_card(tmp, self.cfg, metrics=results.get("after"), step=total, name="model")
            replace_dir(tmp, self.run_dir / "model")
            evals = {k: results[k] for k in ("before", "after") if results.get(k)}
            if self.best is not None:
                results["best"] = self.best
                evals["best"] = {"step": self.best["step"], **self.best["metrics"]}
            results["health"] = health = monitor.finish(results, total)
            evals.update({k: health[k] for k in ("verdict", "warnings") if evals and health[k]})
            if evals:
                atomic_write_text(self.run_dir / "eval.json", json.dumps(evals, indent=2))
        acc.wait_for_everyone()
        if self.tb is not None:
            self.tb.close()
        results["steps"] = total
        results["model_dir"] = str(self.run_dir / "model")
        return results
