"""The AWS backend: asynchronous AWS Lambda invocations through boto3; data through S3.

What AWS asks of a client, and where it is handled:
- throttling (HTTP 429 ``TooManyRequestsException``): the Lambda client retries with botocore's
  ``standard`` mode (exponential backoff with jitter; ``wren.aws.retry-mode``).  In a storm its
  shared retry quota runs out and it stops retrying; then the senders pause (jittered exponential
  backoff, at least Retry-After) and send the invocation again, for up to
  ``wren.aws.throttle-timeout`` seconds before its calls fail with a clear error.  Its ``adaptive``
  mode is not the default: after a storm of 429s its client-side rate limiter falls towards half
  a request per second and recovers slowly, which stalled a 500-call map for minutes in our
  fault tests; pacing here comes from the cap on invocations in flight instead;
- scale-up: AWS adds at most 1,000 execution environments per 10 s per function, so the calls in
  flight may grow by a burst of ``_BURST`` and then ``_RAMP_PER_S`` per second, never above
  ``wren.aws.max-concurrency``; a call stops counting once its result is in;
- at-least-once delivery: a duplicate run finds its result record already written (records are
  first-writer-wins) and the monitor counts each call once;
- a call whose result has not come within its timeout plus ``wren.aws.lost-call-grace`` (the
  event was dropped, or its worker died), or whose invoke failed for good, gets a failure record
  written here (``lost`` / ``invoke``), so no future waits forever; the host's retry mechanism
  (``dask_wren.attempts``, the one retry authority) then decides whether to run it again;
- before the first invoke, a preflight reads the deployment once (``Deployment``): the function
  must exist, record (at deploy time) the same Python minor, cloudpickle, dask and protocol
  versions as here, hold the host's signing key (``wren.aws.signing-key``), and leave every
  re-run to the host (asynchronous retries 0: Lambda would
  otherwise run a failing call up to twice more, unseen); the concurrency it really has caps
  ``wren.aws.max-concurrency``; each job's timeout, bucket and prefix are then checked against
  the function's Timeout and the bucket and prefix recorded at deploy time, before it is invoked.

Where the requests leave from: boto3 costs about 1.5 ms of CPU per invoke in Python, and the GIL
runs one sender thread at a time, so one process tops out near 600 invokes/s.  With
``wren.aws.invoker-processes`` > 0 (the default) the sender threads hand each request to invoker
child processes (``aws_invoker``), each with its own boto3 client, and wait for the answer; the
logic below (queue, cap, ramp, throttle pauses, lost calls) is the same either way.  A client
passed in (tests) cannot cross processes, so it is used from the sender threads here.

State (guarded by ``_cond``):
    queue      invocations accepted, not yet sent (later attempts, retries and backups, first)
    in_flight  request id -> ``_InFlight``: the invocation, its calls without a result yet,
               and its deadline (``None`` until Lambda accepted the invoke; then the call's
               timeout plus the grace, after which the watchdog writes ``lost`` records).
               An entry goes (``_forget``) when its last call is done, when it is throttled
               (back to the queue) or lost (failure records written)
    ceiling    how many invocations may be in flight now (the ramp); Lambda counts concurrency
               in executions, one per invocation whatever its number of calls
Sender threads take from ``queue`` while the invocations in flight stay under the ceiling; a watchdog
thread writes records for lost calls.  An exception escaping one of these threads, or invoker processes
that cannot be restarted, finish the backend (``_fail_everything``): every invocation it holds gets
``backend`` records, later invokes raise ``BackendError``, and the next executor gets a new backend.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions

from dask_wren import deployment as deployed
from dask_wren.backends import aws_invoker
from dask_wren.backends.base import (
    ADMIT_RETRY,
    Invocation,
    InvocationQueue,
    ProgressListeners,
    shared_backend,
    write_failure_records,
)
from dask_wren.config import Settings
from dask_wren.errors import BackendError, VersionMismatchError
from dask_wren.signing import NO_KEY_ADVICE
from lambda_worker import protocol
from lambda_worker.signing import KEY_VARIABLE, SigningKey
from lambda_worker.storage.s3 import CREDENTIALS_ADVICE

_BURST = 1000
_RAMP_PER_S = 100.0
_THROTTLE_BASE_PAUSE = 0.05
_THROTTLE_MAX_PAUSE = 20.0
_THROTTLE_CODES = {"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded"}
_DENIED_CODES = {"AccessDeniedException", "AccessDenied"}
#: Lambda's asynchronous retries when a function has no event invoke configuration.
LAMBDA_DEFAULT_ASYNC_RETRIES = 2

logger = logging.getLogger("dask_wren")


def _is_throttle(error: botocore.exceptions.ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in _THROTTLE_CODES


def host_versions() -> dict[str, str]:
    """What the deployed runtime must match, by the names ``dask-wren deploy`` records (``dask_wren.deployment``)."""
    return deployed.function_environment(deployed.host_versions())


@dataclass
class _InFlight:
    """An invocation sent (or being sent) to Lambda: it counts against the ceiling until forgotten."""

    invocation: Invocation
    calls_left: set[str]  # its calls without a result yet
    deadline: float | None = None  # time.monotonic(); None until Lambda accepted the invoke


@dataclass(frozen=True)
class Deployment:
    """What the preflight read of the deployed function, once per backend."""

    timeout: float | None  # the function's Timeout (s)
    bucket: str | None  # recorded at deploy time (DASK_WREN_BUCKET)
    prefix: str | None  # recorded at deploy time (DASK_WREN_PREFIX)
    concurrency: int | None  # executions it can have at once (reserved, else the account's unreserved)
    memory_mb: int | None = None  # its MemorySize: a budget's estimate before any call has finished


class AWSLambdaBackend(ProgressListeners):
    stops_running_calls = False  # a running execution stops only when its worker reads the cancel marker

    def __init__(self, settings: Settings, client: Any = None):
        super().__init__()
        self.function_name = settings.function_name
        self.region = settings.aws_region or settings.region
        self.max_concurrency = settings.max_concurrency
        self.grace = settings.lost_call_grace
        self._host_key = settings.signing_key
        #: The key the function holds (the host's too), once the preflight has compared them.
        self.signing_key: SigningKey | None = None
        if not isinstance(self.function_name, str) or not self.function_name:
            # checked here because the clients skip botocore's parameter validation (client_config)
            raise ValueError(f"wren.aws.function-name must be a non-empty string, not {self.function_name!r}")
        self.client = client or boto3.session.Session().client(
            "lambda",
            region_name=self.region,
            endpoint_url=settings.lambda_endpoint_url,
            config=aws_invoker.client_config(
                retry_mode=settings.retry_mode,
                max_attempts=settings.invoke_max_attempts,
                pool_connections=settings.invoke_threads,
            ),
        )
        self._threads_wanted = settings.invoke_threads
        # invoker children, each with invoke_threads / processes threads (a client object passed in
        # cannot cross processes: its invokes go from the sender threads here)
        self._processes = 0 if client is not None else min(settings.invoker_processes, settings.invoke_threads)
        self._pool_config = {
            "region": self.region,
            "endpoint_url": settings.lambda_endpoint_url,
            "function_name": self.function_name,
            "retry_mode": settings.retry_mode,
            "max_attempts": settings.invoke_max_attempts,
            "threads": -(-settings.invoke_threads // max(1, self._processes)),
        }
        self._pool: aws_invoker.InvokerPool | None = None
        self._pool_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue = InvocationQueue()
        self._in_flight: dict[str, _InFlight] = {}  # first request id -> entry
        self._ramp_start: float | None = None
        self._threads: list[threading.Thread] = []
        self.deployment: Deployment | None = None
        self._jobs_checked: set[tuple[Any, ...]] = set()
        self._closed = False
        self._failure: str | None = None  # one of its threads failed: this backend is finished
        self.sent = 0  # invoke requests accepted by Lambda (for diagnostics and benchmarks)
        self.throttled = 0  # invokes that botocore gave up on and that were sent again after a pause
        self.throttle_timeout = settings.throttle_timeout
        self._throttle_streak = 0
        self._throttled_since: dict[str, float] = {}
        self._paused_until = 0.0

    # -- the Backend protocol -----------------------------------------------------------------

    def invoke(self, invocations: list[Invocation]) -> None:
        if self.deployment is None:
            self.preflight()
        self._check_jobs(invocations)
        if self._processes and (self._pool is None or self._pool.broken):
            self._start_invokers()
        with self._cond:  # against _fail_everything: queued before it looks, or refused here
            if self._failure is not None:
                raise BackendError(f"{self._failure}; a new executor starts a new backend")
            if self._closed:
                raise RuntimeError("this AWS backend has been shut down")
            if not self._in_flight and not self._queue:
                self._ramp_start = time.monotonic()  # idle: the next burst starts afresh
            for inv in invocations:
                if inv.attempt:  # a retry or a backup is late already: it goes first
                    self._queue.appendleft(inv)
                else:
                    self._queue.append(inv)
            self._start_threads()
            self._cond.notify_all()

    def cancel(self, request_id: str, call_id: str) -> None:
        """Drop a call that has not been sent; a sent one runs, and its result is ignored."""
        with self._cond:
            if self._queue.cancel(request_id, call_id):
                return
            entry = self._in_flight.get(request_id)
            if entry is not None:
                entry.invocation.cancelled.add(call_id)
        self.call_done(request_id, call_id)

    def call_done(self, request_id: str, call_id: str) -> None:
        """A call's result is in (or it no longer matters): it stops counting as in flight."""
        with self._cond:
            entry = self._in_flight.get(request_id)
            if entry is None or call_id not in entry.calls_left:
                return
            entry.calls_left.discard(call_id)
            if entry.calls_left:
                self._cond.notify_all()
            else:
                self._forget(request_id)

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.drain()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    @property
    def in_flight(self) -> int:
        """Invocations sent (or being sent) whose calls are not all done: what the cap counts."""
        with self._cond:
            return len(self._in_flight)

    def invoker_pids(self) -> list[int]:
        """The invoker processes' ids (none before the first invoke, or with invoker-processes 0)."""
        pool = self._pool
        return pool.pids() if pool is not None else []

    # -- preflight ----------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check the deployed function before the first invoke; raise one actionable error."""
        name = self.function_name
        try:
            config = self.client.get_function_configuration(FunctionName=name)
        except botocore.exceptions.NoCredentialsError:
            raise BackendError(f"no AWS credentials found: {CREDENTIALS_ADVICE}") from None
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise BackendError(
                    f"the Lambda function {name!r} does not exist in region {self.region or 'default'}: "
                    "deploy it with `dask-wren deploy`, or set wren.aws.function-name / wren.aws.region"
                ) from None
            if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"):
                raise BackendError(
                    f"AWS refused to describe the Lambda function {name!r} ({code}): the credentials "
                    "in use lack lambda:GetFunctionConfiguration / lambda:InvokeFunction on it, or are invalid"
                ) from None
            raise BackendError(f"could not check the Lambda function {name!r}: {e}") from None
        except botocore.exceptions.EndpointConnectionError as e:
            raise BackendError(f"cannot reach the Lambda endpoint: {e}") from None
        recorded = (config.get("Environment") or {}).get("Variables") or {}
        problems = deployed.version_mismatches(recorded)
        if problems:
            raise VersionMismatchError(
                f"the Lambda function {name!r} was deployed for other versions ("
                + "; ".join(problems)
                + "). Pickled functions only cross between equal versions: redeploy from this environment "
                "with `dask-wren deploy`, or install the deployed versions here."
            )
        self.signing_key = self._check_signing_key(recorded.get(KEY_VARIABLE))
        state = config.get("State", "Active")
        if state not in ("Active", None):
            raise BackendError(f"the Lambda function {name!r} is {state}, not Active; try again shortly")
        self._check_async_retries()
        concurrency = self._read_concurrency()
        if concurrency is not None and concurrency < self.max_concurrency:
            logger.info(
                "dask-wren: the Lambda function %s can run %d invocations at once; invocations in flight are "
                "capped at %d instead of wren.aws.max-concurrency %d", name, concurrency, concurrency, self.max_concurrency,
            )
            self.max_concurrency = concurrency
        timeout = config.get("Timeout")
        self.deployment = Deployment(
            timeout=float(timeout) if timeout else None,
            bucket=recorded.get(deployed.BUCKET_VARIABLE),
            prefix=recorded.get(deployed.PREFIX_VARIABLE),
            concurrency=concurrency,
            memory_mb=config.get("MemorySize"),
        )
        logger.info(
            "dask-wren: preflight passed for the Lambda function %s: versions and signing key match, no asynchronous "
            "retries; Timeout %s s, concurrency %s, invocations in flight capped at %d",
            name, timeout, concurrency if concurrency is not None else "unknown", self.max_concurrency,
        )

    def _check_signing_key(self, deployed_key: str | None) -> SigningKey:
        """The function and this host must hold the same key: the workers would reject every payload."""
        name = self.function_name
        if not deployed_key:
            raise BackendError(
                f"the Lambda function {name!r} has no signing key (no {KEY_VARIABLE} in its environment), so its "
                "workers would trust nothing this host writes: redeploy with `dask-wren deploy`"
            )
        if not self._host_key:
            raise BackendError(
                f"this host has no signing key for the Lambda function {name!r} (wren.aws.signing-key is not set): {NO_KEY_ADVICE}"
            )
        mine = SigningKey.from_text(self._host_key, "wren.aws.signing-key")
        theirs = SigningKey.from_text(deployed_key, f"{KEY_VARIABLE} of the Lambda function {name!r}")
        if mine != theirs:
            raise BackendError(
                f"the Lambda function {name!r} holds another signing key (id {theirs.id}) than this host's "
                f"wren.aws.signing-key (id {mine.id}): it was redeployed from elsewhere, or these settings are "
                f"stale; {NO_KEY_ADVICE}"
            )
        return mine

    def _check_async_retries(self) -> None:
        """Lambda must not re-run failed events itself: every re-run is the host's decision."""
        name = self.function_name
        try:
            retries = self.client.get_function_event_invoke_config(FunctionName=name).get(
                "MaximumRetryAttempts", LAMBDA_DEFAULT_ASYNC_RETRIES
            )
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in _DENIED_CODES:
                logger.warning(
                    "dask-wren: cannot read the asynchronous invoke configuration of %s (%s); make sure its "
                    "MaximumRetryAttempts is 0 (`dask-wren deploy` sets it)", name, code,
                )
                return
            if code != "ResourceNotFoundException":
                raise BackendError(f"could not read the asynchronous invoke configuration of {name!r}: {e}") from None
            retries = LAMBDA_DEFAULT_ASYNC_RETRIES  # no configuration: Lambda's default applies
        if retries:
            raise BackendError(
                f"the Lambda function {name!r} retries failed asynchronous invocations itself "
                f"(MaximumRetryAttempts {retries}), so a call that crashes or overruns would run up to {retries + 1} "
                "times, unseen by dask-wren, which decides every re-run itself: redeploy with `dask-wren deploy` "
                f"(it sets the retries to 0), or run `aws lambda put-function-event-invoke-config --function-name "
                f"{name} --maximum-retry-attempts 0`"
            )

    def _read_concurrency(self) -> int | None:
        """Executions the function can have at once: its reserved concurrency, else the account's
        unreserved concurrency; ``None`` (with a log line) when neither can be read."""
        name = self.function_name
        try:
            reserved = self.client.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            logger.info("dask-wren: cannot read the reserved concurrency of %s (%s)", name, e)
            reserved = None
        if reserved == 0:
            raise BackendError(
                f"the Lambda function {name!r} has a reserved concurrency of 0, so Lambda runs none of its "
                "invocations: raise it (`aws lambda delete-function-concurrency --function-name "
                f"{name}`) and try again"
            )
        if reserved is not None:
            return int(reserved)
        try:
            limits = self.client.get_account_settings().get("AccountLimit", {})
            unreserved = limits.get("UnreservedConcurrentExecutions")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            logger.info(
                "dask-wren: cannot read the account's Lambda concurrency (%s); invocations in flight stay capped at "
                "wren.aws.max-concurrency %d", e, self.max_concurrency,
            )
            return None
        return int(unreserved) if unreserved else None

    def _check_jobs(self, invocations: list[Invocation]) -> None:
        """Each job's timeout, bucket and prefix fit the deployment: one error, before any invoke."""
        deployment = self.deployment
        for inv in invocations:
            storage = inv.event.get("storage") or {}
            job = (inv.timeout, storage.get("bucket"), inv.event.get("prefix"))
            if job in self._jobs_checked:
                continue
            timeout, bucket, prefix = job
            if deployment.timeout is not None and timeout > deployment.timeout:
                raise BackendError(
                    f"the call timeout ({timeout:g} s, wren.timeout or timeout=) is longer than the Lambda function "
                    f"{self.function_name!r} may run ({deployment.timeout:g} s, its Timeout): Lambda would stop the "
                    f"calls first. Pass timeout={deployment.timeout:g} or less, or redeploy with "
                    f"`dask-wren deploy --timeout {min(900, int(-(-timeout // 1)))}`"
                )
            if bucket and deployment.bucket and bucket != deployment.bucket:
                raise BackendError(
                    f"this executor's bucket is {bucket!r} (wren.storage.bucket) but the Lambda function "
                    f"{self.function_name!r} was deployed for bucket {deployment.bucket!r}, the only one its role "
                    "may use: set wren.storage.bucket to it, or redeploy with `dask-wren deploy --bucket "
                    f"{bucket}`"
                )
            if deployment.prefix and prefix != deployment.prefix:
                raise BackendError(
                    f"this executor's prefix is {prefix!r} (wren.storage.prefix) but the Lambda function "
                    f"{self.function_name!r} was deployed for prefix {deployment.prefix!r}, the only one its role "
                    f"may use: set wren.storage.prefix to it, or redeploy with `dask-wren deploy --prefix {prefix}`"
                )
            self._jobs_checked.add(job)

    # -- sending ------------------------------------------------------------------------------

    def _start_invokers(self) -> None:
        """Start the invoker processes, or new ones in place of a pool that could not restart a child."""
        with self._pool_lock:
            if self._closed or (self._pool is not None and not self._pool.broken):
                return
            if self._pool is not None:
                self._pool.close()
            pool = aws_invoker.InvokerPool(self._pool_config, self._processes, self.client.exceptions)
            try:
                pool.start()
            except aws_invoker.InvokerStartError as e:
                raise BackendError(
                    f"{e}. Set wren.aws.invoker-processes to 0 to send invokes from threads in this process."
                ) from None
            self._pool = pool

    def _start_threads(self) -> None:
        if self._threads:
            return
        for i in range(self._threads_wanted):
            t = threading.Thread(
                target=self._guarded, args=(self._sender, "sender thread"), name=f"dask-wren-invoke-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)
        w = threading.Thread(
            target=self._guarded, args=(self._watchdog, "lost-call watchdog"), name="dask-wren-lost-calls", daemon=True
        )
        w.start()
        self._threads.append(w)

    def _guarded(self, loop: Any, name: str) -> None:
        """Run a thread's loop; an exception escaping it finishes the backend rather than leaving
        the calls it was to send or watch waiting forever."""
        try:
            loop()
        except BaseException as e:  # a bug, or invoker processes that cannot restart
            self._fail_everything(e, name)

    def _fail_everything(self, error: BaseException, name: str) -> None:
        """Every invocation this backend holds (queued or in flight) fails with ``backend`` records
        (the stdlib's broken-pool pattern); later invokes are refused, and ``shared_backend`` gives
        the next executor a new backend."""
        with self._cond:
            if self._closed:  # shut down, or failed already: nothing is owed any more
                return
            self._failure = f"the AWS backend's {name} failed ({type(error).__name__}: {error})"
            self._closed = True
            pending = self._queue.drain() + [entry.invocation for entry in self._in_flight.values()]
            self._in_flight.clear()
            self._cond.notify_all()
        logger.error("dask-wren: %s", self._failure, exc_info=error)
        for inv in pending:
            write_failure_records(inv, protocol.FAIL_BACKEND, self._failure, self.signing_key)
        self.notify()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _ceiling(self, now: float) -> int:
        if self._ramp_start is None:
            self._ramp_start = now
        ramp = _BURST + _RAMP_PER_S * (now - self._ramp_start)
        return int(min(self.max_concurrency, ramp))

    def _take(self) -> Invocation | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                pause = self._paused_until - time.monotonic()
                if pause > 0:
                    self._cond.wait(timeout=pause)
                    continue
                if self._queue:
                    # Lambda counts concurrency in executions: one per invocation, whatever its chunksize
                    if len(self._in_flight) < self._ceiling(time.monotonic()):
                        inv, held = self._queue.take()
                        if inv is None:
                            if held:  # budgets hold back what is left: ask them again soon
                                self._cond.wait(timeout=ADMIT_RETRY)
                            continue
                        self._in_flight[inv.request_id] = _InFlight(inv, set(inv.call_ids) - inv.cancelled)
                        return inv
                    self._cond.wait(timeout=1.0)  # the ramp grows with time, results free room
                else:
                    self._cond.wait()

    def _sender(self) -> None:
        while True:
            inv = self._take()
            if inv is None:
                return
            try:
                payload = json.dumps(inv.event).encode()
                if self._pool is not None:
                    status = self._pool.invoke(payload)
                else:
                    response = self.client.invoke(
                        FunctionName=self.function_name, InvocationType="Event", Payload=payload
                    )
                    # Read the (empty) body so urllib3 returns the connection to its pool: otherwise
                    # every invoke opens a new connection (a TLS handshake each, on AWS).
                    response["Payload"].read()
                    status = response.get("StatusCode")
                if status != 202:
                    raise BackendError(f"Lambda answered {status} to an async invoke")
            except botocore.exceptions.ClientError as e:
                if _is_throttle(e) and self._throttled(inv, e):
                    continue
                self._lost(inv, protocol.FAIL_INVOKE, f"the invoke request to Lambda failed: {e}")
                continue
            except aws_invoker.InvokerStartError:
                raise  # no invoker process can send anything: the backend is finished (_guarded)
            except Exception as e:  # after botocore's retries: this invocation will not run
                self._lost(inv, protocol.FAIL_INVOKE, f"the invoke request to Lambda failed: {e}")
                continue
            self._throttle_streak = 0
            with self._cond:
                self.sent += 1
                entry = self._in_flight.get(inv.request_id)
                if entry is not None:
                    inv.dispatched = time.monotonic()
                    entry.deadline = inv.dispatched + inv.timeout + self.grace

    def _forget(self, request_id: str) -> None:
        """The invocation filed as ``request_id`` no longer counts as in flight (hold ``_cond``):
        the senders may have room again."""
        self._in_flight.pop(request_id, None)
        self._cond.notify_all()

    def _throttled(self, inv: Invocation, error: botocore.exceptions.ClientError) -> bool:
        """botocore gave up on a throttled invoke (its retry quota ran out in a storm): pause all
        senders with jittered exponential backoff, honouring Retry-After, and send it again.
        False once the invocation has been throttled for longer than ``throttle_timeout``."""
        now = time.monotonic()
        first = self._throttled_since.setdefault(inv.request_id, now)
        if now - first > self.throttle_timeout:
            return False
        headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            retry_after = float(headers.get("retry-after", 0))
        except ValueError:
            retry_after = 0.0
        with self._cond:
            self._throttle_streak += 1
            backoff = min(_THROTTLE_MAX_PAUSE, _THROTTLE_BASE_PAUSE * 2 ** min(self._throttle_streak, 10))
            pause = max(retry_after, random.uniform(backoff / 2, backoff))
            self._paused_until = max(self._paused_until, now + pause)
            self._queue.appendleft(inv)
            self.throttled += 1
            self._forget(inv.request_id)
            streak = self._throttle_streak
        # the first pause of a storm at INFO, the rest at DEBUG: a storm would otherwise flood the log
        logger.log(
            logging.INFO if streak == 1 else logging.DEBUG,
            "dask-wren: Lambda throttled %s after botocore's retries; invokes pause %.2f s (pause %d in a row)",
            inv.request_id, pause, streak,
        )
        return True

    def _lost(self, inv: Invocation, kind: str, message: str) -> None:
        try:
            write_failure_records(inv, kind, message, self.signing_key)
        finally:
            with self._cond:
                self._forget(inv.request_id)
            self.notify()

    def _watchdog(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                lost = [e.invocation for e in self._in_flight.values() if e.deadline is not None and now > e.deadline]
                self._cond.wait(timeout=min(1.0, max(0.05, self.grace / 4)))
            for inv in lost:
                logger.warning(
                    "dask-wren: invocation %s (calls %s) lost: no result within its timeout (%g s) plus %g s",
                    inv.request_id, ", ".join(inv.call_ids[:5]) + (" ..." if len(inv.call_ids) > 5 else ""),
                    inv.timeout, self.grace,
                )
                # The host decides whether to invoke the calls again (``dask_wren.attempts``); a late
                # original cannot count twice: this record is written first at its attempt's key.
                self._lost(
                    inv,
                    protocol.FAIL_LOST,
                    f"no result within the call's timeout ({inv.timeout:g} s) plus {self.grace:g} s: the Lambda "
                    f"invocation was lost (dropped, or its worker died); see CloudWatch log group "
                    f"/aws/lambda/{self.function_name}",
                )


def shared_aws_backend(settings: Settings) -> AWSLambdaBackend:
    """One backend per function configuration for the whole process.

    Sharing keeps one set of sender threads and invoker processes instead of a new set per
    executor, and one in-flight cap and scale-up ramp per function, as AWS counts them.  A backend
    made under other AWS environment variables (credentials, profile) is not reused: those are
    what its clients read (its invoker processes inherit the rest too, which changes nothing they send).
    """
    config = (
        settings.function_name, settings.aws_region, settings.region, settings.lambda_endpoint_url,
        settings.retry_mode, settings.invoke_max_attempts, settings.invoke_threads, settings.invoker_processes,
        settings.max_concurrency, settings.lost_call_grace, settings.throttle_timeout,
        settings.signing_key,  # the preflight checks it against the function's: one backend per key
    )
    aws_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    return shared_backend("aws", config, aws_env, lambda: AWSLambdaBackend(settings))
