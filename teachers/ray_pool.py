"""Any teacher backend as a pool of Ray actors: the caching job's ``ray`` engine.

:class:`RayTeacher` is a :class:`~teachers.base.Teacher` like the others, so the job does not
change: the driver plans (render, key, register), leases each key with its price reserved,
parses, stores and counts every answer through :class:`teachers.sending.Sender`, exactly as
with the ``local`` engine. Only the calls to the model move: requests are pulled from the
sender as the pool has room, cut into batches, and each batch goes to one
:class:`TeacherActor` (``hf_local`` / ``vllm_engine`` with its CPUs or GPUs; an
``openai_compat`` client with its share of the rate limits). A batch's answers come back to
the driver together, so an answer waits in Ray for at most the rest of its batch.

Why actors fed by the driver rather than a Ray Dataset built from the pending keys: what is
sent next is decided by the lease at the moment of sending (the budget's reservations, keys
another job is sending, the error-rate stop), so the input cannot be fixed up front. The
pool has the shape of ``map_batches`` with an actor pool -- long-lived actors holding the
model, batches streamed through them, at most ``in_flight`` batches per actor -- with the
back-pressure the lease needs.

Faults: an actor that dies under a batch is restarted by Ray (``max_restarts``) and the
driver sends the batch again (``cache.ray.max_reruns`` times; each attempt that may have
reached a paid API is counted in its answer's price, ``maybe_billed``); past that the
batch's requests become ``backend_error`` rows, which ``cache retry`` sends again. Nothing
is stored twice: every answer goes through the sender's one store path, keyed.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from teachers.base import OnResult, RawOutput, Teacher, TeacherRequest
from workbench.config import RayConfig, TeacherConfig
from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)

IN_FLIGHT = 2
"""Batches each actor holds: one running, one queued behind it, so it never waits for the
driver between batches."""
MAX_RESTARTS = 8
"""Restarts Ray gives one actor over a job (a model that crashes its process every time
ends the job instead of looping)."""
API_BACKENDS = ("openai_compat",)


@dataclass(frozen=True)
class PoolPlan:
    """How many actors, what each reserves, and each one's teacher settings."""

    configs: list[TeacherConfig]
    num_cpus: float
    num_gpus: float
    batch_size: int


def _split(total: int, n: int) -> list[int]:
    """``total`` shared out over ``n`` parts that sum to it (0 stays 0: no limit)."""
    if total == 0:
        return [0] * n
    return [total // n + (i < total % n) for i in range(n)]


def plan_pool(tcfg: TeacherConfig, rcfg: RayConfig) -> PoolPlan:
    """The pool for ``tcfg``: an API teacher's limits are the totals, shared out between the
    actors (never multiplied); the pool is cut to the smallest limit set so that every
    actor has at least one of each."""
    api = tcfg.backend in API_BACKENDS
    n = rcfg.actors
    if api:
        limits = [x for x in (tcfg.max_concurrency, tcfg.requests_per_minute,
                              tcfg.tokens_per_minute) if x > 0]
        if limits and min(limits) < n:
            log.warning("cache.ray.actors=%d is more than the teacher's smallest limit (%d); "
                        "using %d actors", n, min(limits), min(limits))
            n = min(limits)
        conc = _split(tcfg.max_concurrency, n)
        rpm = _split(tcfg.requests_per_minute, n)
        tpm = _split(tcfg.tokens_per_minute, n)
        configs = [replace(tcfg, max_concurrency=conc[i], requests_per_minute=rpm[i],
                           tokens_per_minute=tpm[i]) for i in range(n)]
        batch = rcfg.batch_size or 4 * max(1, min(conc))
    num_cpus = rcfg.num_cpus or (0.25 if api else 1.0)
    num_gpus = rcfg.num_gpus or (float(tcfg.tensor_parallel_size)
                                 if tcfg.backend == "vllm_engine" else 0.0)
    if not api:  # a local model computes on the CPUs Ray gave its actor, not on every core
        threads = tcfg.num_threads or max(1, int(num_cpus))
        configs = [replace(tcfg, num_threads=threads)] * n
        batch = rcfg.batch_size or 4 * tcfg.batch_size
    return PoolPlan(configs=configs, num_cpus=num_cpus, num_gpus=num_gpus, batch_size=batch)


class TeacherActor:
    """One backend, loaded once in its actor process, answering batches of requests."""

    def __init__(self, tcfg: TeacherConfig) -> None:
        from teachers import make_teacher

        if tcfg.num_threads:
            import torch

            torch.set_num_threads(tcfg.num_threads)
        self.teacher: Teacher = make_teacher(tcfg)
        self.load_error: Exception | None = None
        try:
            self.teacher.load()
        except WorkbenchError as e:  # reported by ready(), as the error it is
            self.load_error = e

    def ready(self) -> int:
        if self.load_error is not None:
            raise self.load_error
        return os.getpid()

    def answer(self, batch: list[TeacherRequest]) -> list[tuple[str, RawOutput]]:
        """Every request of ``batch`` answered (in the order the backend finished them)."""
        out: list[tuple[str, RawOutput]] = []

        def keep(req: TeacherRequest, raw: RawOutput) -> bool:
            out.append((req.key, raw))
            return True

        self.teacher.generate(batch, keep)
        return out

    def close(self) -> None:
        self.teacher.close()


class RayTeacher:
    """A :class:`~teachers.base.Teacher` whose calls run on a pool of Ray actors."""

    name = "ray"

    def __init__(self, tcfg: TeacherConfig, rcfg: RayConfig, *, verbose: bool = False,
                 job_name: str = "") -> None:
        from teachers import make_teacher

        self.tcfg, self.rcfg, self.verbose = tcfg, rcfg, verbose
        self.plan = plan_pool(tcfg, rcfg)
        self._id = make_teacher(tcfg).model_id()
        self.job_name = job_name or f"workbench-teacher-{os.getpid()}"
        self.actors: list[Any] = []
        self.reruns = 0
        """Batches sent again after their actor died."""
        self._ray: Any = None
        self._unseen: Counter[str] = Counter()
        """Attempts of a key that died with their actor after reaching a paid API."""

    def model_id(self) -> str:
        return self._id

    def actor_name(self, i: int) -> str:
        """The name of pool actor ``i`` (``ray.get_actor(name)`` finds it)."""
        return f"{self.job_name}-{i}"

    def load(self) -> None:
        from workbench.ray_engine import connect

        ray = self._ray = connect(self.rcfg.address, verbose=self.verbose)
        env = {}
        if self.tcfg.api_key_env and self.tcfg.api_key_env in os.environ:
            env[self.tcfg.api_key_env] = os.environ[self.tcfg.api_key_env]
        options = dict(num_cpus=self.plan.num_cpus, num_gpus=self.plan.num_gpus,
                       max_restarts=MAX_RESTARTS, max_task_retries=0)
        if env:  # the API key reaches the actors' processes, wherever they run
            options["runtime_env"] = {"env_vars": env}
        remote = ray.remote(TeacherActor)
        self.actors = [remote.options(name=self.actor_name(i), **options).remote(c)
                       for i, c in enumerate(self.plan.configs)]
        log.info("Ray engine: %d %s actors (%.2g CPU, %.2g GPU each), batches of %d",
                 len(self.actors), self.tcfg.backend, self.plan.num_cpus, self.plan.num_gpus,
                 self.plan.batch_size)
        try:
            ray.get([a.ready.remote() for a in self.actors])
        except ray.exceptions.RayTaskError as e:
            self.close()
            cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
            if isinstance(cause, WorkbenchError):
                raise cause from None
            raise WorkbenchError(f"a Ray teacher actor failed to load {self.tcfg.model!r}: "
                                 f"{cause}") from None

    def generate(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        """Answer ``requests`` on the pool, calling ``on_result`` on this process as each
        batch lands; once it returns False no new request is pulled, and the batches in
        flight are still answered and handed over (they are paid for)."""
        if not self.actors:
            raise RuntimeError("call load() first")
        ray = self._ray
        source: Iterator[TeacherRequest] = iter(requests)
        n = len(self.actors)
        slots = deque(i for _ in range(IN_FLIGHT) for i in range(n))  # round robin
        pending: dict[Any, tuple[int, list[TeacherRequest], int]] = {}
        pulling = True

        def next_batch() -> list[TeacherRequest]:
            batch: list[TeacherRequest] = []
            for req in source:
                batch.append(req)
                if len(batch) >= self.plan.batch_size:
                    break
            return batch

        while True:
            while pulling and slots:
                batch = next_batch()
                if not batch:
                    pulling = False
                    break
                i = slots.popleft()
                pending[self.actors[i].answer.remote(batch)] = (i, batch, 0)
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            i, batch, attempt = pending.pop(done[0])
            answers = self._collect(done[0], i, batch, attempt)
            if answers is None:  # its actor died: sent again to it once Ray restarted it
                pending[self.actors[i].answer.remote(batch)] = (i, batch, attempt + 1)
                continue
            slots.append(i)
            by_key = {r.key: r for r in batch}
            for key, raw in answers:
                raw.maybe_billed += self._unseen.pop(key, 0)
                if not on_result(by_key[key], raw):
                    pulling = False

    def _collect(self, ref: Any, i: int, batch: list[TeacherRequest],
                 attempt: int) -> list[tuple[str, RawOutput]] | None:
        """A batch's answers; None when it is to be sent again because its actor died."""
        ray = self._ray
        try:
            return ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            died = f"the Ray actor {self.actor_name(i)} died under this request ({type(e).__name__})"
        except ray.exceptions.RayTaskError as e:  # the backend raised: its requests are errors
            cause = getattr(e, "cause", None) or e
            why = f"{type(cause).__name__}: {cause}"[:500]
            return [(r.key, RawOutput(error_kind="backend_error", error=why)) for r in batch]
        if self.tcfg.backend in API_BACKENDS:  # the attempt that died may have been billed
            for r in batch:
                self._unseen[r.key] += 1
        if attempt < self.rcfg.max_reruns:
            log.warning("%s; sending its batch of %d again (Ray restarts the actor)", died,
                        len(batch))
            self.reruns += 1
            return None
        log.error("%s, %d times; its %d requests are stored as backend_error rows "
                  "(`workbench cache retry` sends them again)", died, attempt + 1, len(batch))
        return [(r.key, RawOutput(error_kind="backend_error", error=died)) for r in batch]

    def close(self) -> None:
        ray, self.actors = self._ray, self.actors
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 -- already gone
                pass
        self.actors = []
