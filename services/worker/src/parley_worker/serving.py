"""One request from its record to its answer: decoded, checked (attempts, cancel, deadline),
generated (again after an engine failure, within limits), answered or dead-lettered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum
from typing import Final

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.envelopes import EnvelopeError, decode
from parley_common.telemetry import annotate, record_span
from parley_common.timeutil import now_ms
from parley_worker.config import Settings
from parley_worker.engines.base import InvalidParameterError, PromptTooLongError
from parley_worker.envelopes import Outcome, generation_request
from parley_worker.generation import Generator
from parley_worker.jobs import Cancels, Job
from parley_worker.metrics import WorkerMetrics
from parley_worker.publishing import Publisher

__all__ = ["RequestServer", "Verdict"]

log = logging.getLogger(__name__)

_ENGINE_RETRY_DELAY_S: Final = 0.5


class Verdict(Enum):
    """What becomes of a request after an attempt at it."""

    DONE = "done"  # answered or dead-lettered: its offset may be committed
    RETRY = "retry"  # the engine failed it; generate it again
    HANDED_BACK = "handed_back"  # the engine looks broken: left uncommitted for another worker


class RequestServer:
    """Serves one request at a time per call; `restart(job)` counts a new attempt on record,
    `broken(reason)` tells the worker to stop taking work."""

    def __init__(
        self,
        settings: Settings,
        generator: Generator,
        publisher: Publisher,
        metrics: WorkerMetrics,
        cancels: Cancels,
        *,
        restart: Callable[[Job], None],
        broken: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._generator = generator
        self._publisher = publisher
        self._metrics = metrics
        self._cancels = cancels
        self._restart = restart
        self._broken = broken
        self._consecutive_failures = 0

    async def serve(self, job: Job) -> Verdict:
        """Never raises but for cancellation: a bug here must not leave the partition blocked
        behind this request."""
        try:
            return await self._serve(job)
        except asyncio.CancelledError:
            raise  # shutdown past its grace or a lost partition: left uncommitted
        except Exception as exc:
            log.exception("request failed in the worker", extra={"offset": job.record.offset})
            reason = f"the worker failed on this request: {exc!r}"
            await self._publisher.dead_letter(job, reason)
            if job.request is not None:
                try:
                    await self._publisher.answer(
                        job, Outcome(types_pb2.FINISH_REASON_ERROR, error=reason)
                    )
                except Exception:
                    log.exception("could not answer a failed request")
            return Verdict.DONE

    async def _serve(self, job: Job) -> Verdict:
        try:
            request = decode(envelopes_pb2.CompletionRequest, job.record.value)
        except EnvelopeError as exc:
            await self._publisher.dead_letter(job, str(exc))
            return Verdict.DONE
        job.request = request
        picked_ms = now_ms()
        self._observe_pick(job, request, picked_ms)
        refusal = self._refusal(job, request, picked_ms)
        if refusal is not None:
            if refusal.finish == types_pb2.FINISH_REASON_ERROR:
                await self._publisher.dead_letter(job, refusal.error)
            await self._publisher.answer(job, refusal)
            return Verdict.DONE
        try:
            gen_request = generation_request(request)
        except ValueError as exc:
            return await self._answer(job, Outcome(types_pb2.FINISH_REASON_ERROR, error=str(exc)))
        verdict = Verdict.RETRY
        while verdict is Verdict.RETRY:
            try:
                outcome = await self._generator.generate(job, gen_request, picked_ms)
            except (PromptTooLongError, ValueError) as exc:
                # The request's fault, with a message the user can act on.
                error = Outcome(
                    types_pb2.FINISH_REASON_ERROR,
                    error=str(exc),
                    error_param=exc.param if isinstance(exc, InvalidParameterError) else "",
                )
                return await self._answer(job, error)
            except Exception as exc:
                verdict = await self._engine_failed(job, exc)
                continue
            self._consecutive_failures = 0
            return await self._answer(job, outcome)
        return verdict

    def _observe_pick(
        self, job: Job, request: envelopes_pb2.CompletionRequest, picked_ms: int
    ) -> None:
        annotate(
            {
                "parley.request_id": request.request_id,
                "parley.chat_id": request.chat_id,
                "gen_ai.request.model": request.model,
                "parley.attempt": job.attempt,
            }
        )
        if request.enqueued_unix_ms:
            self._metrics.queue_wait.observe(max(0, picked_ms - request.enqueued_unix_ms) / 1000)
            record_span(
                "queue wait",
                start_ns=request.enqueued_unix_ms * 1_000_000,
                end_ns=picked_ms * 1_000_000,
            )

    def _refusal(
        self, job: Job, request: envelopes_pb2.CompletionRequest, picked_ms: int
    ) -> Outcome | None:
        """The answer of a request not to generate (an error one is also dead-lettered)."""
        if job.attempt > self._settings.max_attempts:
            reason = (
                f"tried {job.attempt - 1} times without an answer: each time the worker "
                "running it stopped or its engine failed"
            )
            return Outcome(types_pb2.FINISH_REASON_ERROR, error=reason)
        if request.request_id in self._cancels:
            return Outcome(types_pb2.FINISH_REASON_CANCELLED)
        if request.deadline_unix_ms and picked_ms > request.deadline_unix_ms:
            log.info("expired request dropped", extra={"request_id": request.request_id})
            return Outcome(types_pb2.FINISH_REASON_EXPIRED)
        return None

    async def _answer(self, job: Job, outcome: Outcome) -> Verdict:
        await self._publisher.answer(job, outcome)
        return Verdict.DONE

    async def _engine_failed(self, job: Job, exc: Exception) -> Verdict:
        self._metrics.engine_failures.inc()
        self._consecutive_failures += 1
        log.warning(
            "the engine failed a generation",
            extra={"request_id": job.request.request_id if job.request else "", "error": repr(exc)},
            exc_info=exc,
        )
        if self._consecutive_failures >= self._settings.engine_failure_limit:
            self._broken(f"the engine failed {self._consecutive_failures} generations in a row")
            return Verdict.HANDED_BACK
        if job.attempt >= self._settings.max_attempts:
            reason = f"the engine failed on it {job.attempt} times; last error: {exc!r}"
            await self._publisher.dead_letter(job, reason)
            return await self._answer(job, Outcome(types_pb2.FINISH_REASON_ERROR, error=reason))
        if job.next_seq:
            # Text already reached the reader; a second try would not continue it.
            error = Outcome(types_pb2.FINISH_REASON_ERROR, error=f"generation failed: {exc}")
            return await self._answer(job, error)
        await asyncio.sleep(_ENGINE_RETRY_DELAY_S * job.attempt)
        self._restart(job)
        return Verdict.RETRY
