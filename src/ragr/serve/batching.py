"""Dynamic batching: concurrent requests share forward passes, run off the event loop.

Each served model has one :class:`BatchQueue` and one worker thread. A request submits a job: its
(query, document) pairs to score, or its texts to embed, with each item's token count. The worker
repeatedly takes pending items of one kind in arrival order, across requests, up to
``max_batch_tokens`` tokens; sorts them by length; and runs them in forward passes of at most
``batch_size`` items whose padded size (items x longest item) stays within the same token budget (an
item longer than the budget runs alone). Sorting first keeps items of similar length together, so
little compute goes to padding.
Pairs are scored by :meth:`ragr.infer.Reranker.score`, texts embedded by
:meth:`ragr.models.embedder.Embedder.encode`: the code paths of ``ragr rerank`` and ``ragr eval``.

A job whose client went away is cancelled: it leaves the queue at once and its items that are not
already in a forward pass are never computed.

The queue is bounded: with ``max_pending`` jobs already waiting, :meth:`BatchQueue.submit` refuses a
new one at once with :class:`QueueFull` (the server answers 503 with ``Retry-After``), so overload
turns into quick refusals instead of an ever longer wait.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from typing import Any

#: Job kinds: score (query, document) pairs, or embed texts as queries / as documents (dense, or sparse terms).
RERANK, QUERY, DOCUMENT = "rerank", "query", "document"
SPARSE_QUERY, SPARSE_DOCUMENT = "sparse_query", "sparse_document"


class ShuttingDown(RuntimeError):
    """The queue stopped before the job was done."""


class QueueFull(RuntimeError):
    """The queue already holds ``max_pending`` waiting jobs; retry after ``retry_after`` seconds."""

    def __init__(self, model: str, pending: int, max_pending: int, retry_after: int) -> None:
        super().__init__(f"model '{model}' is busy: {pending} requests are already queued (--max-queue "
                         f"{max_pending}); retry after {retry_after} s")
        self.model, self.pending, self.max_pending, self.retry_after = model, pending, max_pending, retry_after


class Job:
    """One request's items, filled in by the worker; its future resolves with all results in order."""

    __slots__ = ("kind", "items", "costs", "results", "taken", "done", "cancelled", "finished", "loop", "future")

    def __init__(self, kind: str, items: list[Any], costs: list[int], loop: asyncio.AbstractEventLoop) -> None:
        self.kind, self.items, self.costs, self.loop = kind, items, costs, loop
        self.results: list[Any] = [None] * len(items)
        self.taken = 0  # items handed to the worker so far
        self.done = 0  # items computed so far
        self.cancelled = False
        self.finished = False
        self.future: asyncio.Future = loop.create_future()


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class BatchQueue:
    """The request queue and worker thread of one served model.

    Args:
        model: a :class:`ragr.serve.models.ServedModel`.
        max_batch_tokens: token budget of one step and of one forward pass (padded).
        batch_size: most items in one forward pass.
        max_pending: most jobs waiting at once (see :attr:`pending`); a job past it is refused with
            :class:`QueueFull`. None: unbounded.
    """

    #: Bounds of the Retry-After estimate, in seconds.
    RETRY_MIN, RETRY_MAX = 1, 60

    def __init__(self, model: Any, max_batch_tokens: int = 16384, batch_size: int = 32,
                 max_pending: int | None = 256) -> None:
        if max_batch_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_batch_tokens and batch_size must be >= 1, got {max_batch_tokens}, {batch_size}")
        if max_pending is not None and max_pending < 1:
            raise ValueError(f"max_pending must be >= 1 or None, got {max_pending}")
        self.model = model
        self.max_batch_tokens, self.batch_size, self.max_pending = max_batch_tokens, batch_size, max_pending
        self._item_seconds: float | None = None  # running mean of compute time per item (Retry-After)
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._open = threading.Event()  # cleared: paused (tests hold the worker to fill the queue)
        self._open.set()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "cancelled": 0, "batches": 0, "items": 0, "max_requests_per_batch": 0,
                      "refused": 0}

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name=f"ragr-serve-{self.model.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current forward pass; jobs still queued fail with ShuttingDown."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._open.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def pause(self) -> None:
        """Hold the worker before its next step (requests keep queueing); for tests and maintenance."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()
        with self._cond:
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Jobs with items not yet handed to the worker."""
        with self._cond:
            return len(self._jobs)

    def retry_after(self) -> int:
        """Seconds until the queued work is likely done: queued items x the mean compute time per item,
        within [RETRY_MIN, RETRY_MAX]; RETRY_MIN before anything was computed. An estimate (no lock needed)."""
        per_item = self._item_seconds
        if per_item is None:
            return self.RETRY_MIN
        items = sum(len(job.items) - job.taken for job in list(self._jobs))
        return int(min(self.RETRY_MAX, max(self.RETRY_MIN, math.ceil(items * per_item))))

    def _refuse_if_full(self) -> None:
        """Raise QueueFull when ``max_pending`` jobs are waiting (lock held)."""
        if self.max_pending is not None and len(self._jobs) >= self.max_pending:
            self.stats["refused"] += 1
            raise QueueFull(self.model.name, len(self._jobs), self.max_pending, self.retry_after())

    def check_capacity(self) -> None:
        """Raise QueueFull now if a job submitted now would be refused (a cheap early check; submit
        checks again)."""
        with self._cond:
            self._refuse_if_full()

    # ---- requests -------------------------------------------------------------------------------
    async def submit(self, kind: str, items: list[Any], costs: list[int]) -> list[Any]:
        """Queue ``items`` (with their token ``costs``) and wait for their results, in order.

        Cancelling the awaiting task cancels the job (see :meth:`cancel`). Raises :class:`QueueFull`
        at once when ``max_pending`` jobs are already waiting.
        """
        if len(items) != len(costs):
            raise ValueError("items and costs differ in length")
        if not items:
            return []
        job = Job(kind, list(items), [max(1, int(c)) for c in costs], asyncio.get_running_loop())
        with self._cond:
            if self._stop:
                raise ShuttingDown("the server is shutting down")
            self._refuse_if_full()
            self._jobs.append(job)
            self.stats["requests"] += 1
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            self.cancel(job)
            raise

    def cancel(self, job: Job) -> None:
        """Drop ``job``: out of the queue now, and none of its remaining items will be computed."""
        with self._cond:
            if job.finished or job.cancelled:
                return
            job.cancelled = True
            self.stats["cancelled"] += 1
            try:
                self._jobs.remove(job)
            except ValueError:
                pass

    # ---- worker -----------------------------------------------------------------------------------
    def _take(self) -> list[tuple[Job, int]]:
        """Items of the oldest job's kind, in arrival order, up to the token budget (lock held)."""
        kind = self._jobs[0].kind
        taken: list[tuple[Job, int]] = []
        tokens = 0
        for job in list(self._jobs):
            if job.kind != kind:
                continue
            while job.taken < len(job.items):
                cost = job.costs[job.taken]
                if taken and tokens + cost > self.max_batch_tokens:
                    return taken
                taken.append((job, job.taken))
                job.taken += 1
                tokens += cost
            self._jobs.remove(job)
        return taken

    def _forward_batches(self, step: list[tuple[Job, int]]) -> list[list[tuple[Job, int]]]:
        """Length-sorted (longest first) forward passes of at most ``batch_size`` items and
        ``max_batch_tokens`` padded tokens."""
        step = sorted(step, key=lambda ji: ji[0].costs[ji[1]], reverse=True)
        batches: list[list[tuple[Job, int]]] = []
        for ji in step:
            last = batches[-1] if batches else None
            if (last and len(last) < self.batch_size
                    and (len(last) + 1) * last[0][0].costs[last[0][1]] <= self.max_batch_tokens):
                last.append(ji)
            else:
                batches.append([ji])
        return batches

    def _compute(self, kind: str, items: list[Any]) -> list[Any]:
        if kind == RERANK:
            return self.model.reranker.score(items)
        if kind in (SPARSE_QUERY, SPARSE_DOCUMENT):  # a SPLADE model's {id: weight} per text
            return self.model.reranker.scorer.sparse_terms(items, is_query=kind == SPARSE_QUERY, by="id")
        vectors = self.model.embedder.encode(items, is_query=kind == QUERY, batch_size=len(items))
        return list(vectors.numpy())

    def _run(self) -> None:
        while True:
            self._open.wait()
            with self._cond:
                while not self._jobs and not self._stop:
                    self._cond.wait()
                if self._stop:
                    break
                if not self._open.is_set():
                    continue
                step = self._take()
            self._run_step(step)
        with self._cond:
            left, self._jobs = list(self._jobs), deque()
        for job in left:
            self._fail(job, ShuttingDown("the server is shutting down"))

    def _run_step(self, step: list[tuple[Job, int]]) -> None:
        for batch in self._forward_batches(step):
            live = [(job, i) for job, i in batch if not (job.cancelled or job.finished)]
            if not live:
                continue
            started = time.perf_counter()
            try:
                values = self._compute(live[0][0].kind, [job.items[i] for job, i in live])
            except Exception as exc:  # noqa: BLE001 - the requests get the error, the worker goes on
                for job in {id(j): j for j, _ in live}.values():
                    self._fail(job, exc)
                continue
            per_item = (time.perf_counter() - started) / len(live)
            with self._cond:
                old = self._item_seconds
                self._item_seconds = per_item if old is None else 0.8 * old + 0.2 * per_item
                self.stats["batches"] += 1
                self.stats["items"] += len(live)
                n_jobs = len({id(j) for j, _ in live})
                self.stats["max_requests_per_batch"] = max(self.stats["max_requests_per_batch"], n_jobs)
            for (job, i), value in zip(live, values):
                job.results[i] = value
                job.done += 1
                if job.done == len(job.items) and not job.cancelled:
                    job.finished = True
                    self._call(job, _set_result, job.results)

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._cond:
            if job.finished:
                return
            job.finished = True
            try:
                self._jobs.remove(job)
            except ValueError:
                pass
        self._call(job, _set_exception, exc)

    @staticmethod
    def _call(job: Job, fn: Any, value: Any) -> None:
        try:
            job.loop.call_soon_threadsafe(fn, job.future, value)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass
