"""Async JSON-over-HTTP plumbing shared by the remote reward clients.

* ``httpx.AsyncClient`` with a per-attempt timeout (connect / read / write / pool).
* Bounded retries with exponential backoff and jitter, rotating over several server URLs
  (attempt ``i`` goes to ``urls[(start + i) % len(urls)]``), on: connection errors,
  timeouts, HTTP 408 / 429 / 5xx, and responses that break the contract (not JSON, wrong
  shape). Other 4xx answers mean the request itself was refused and are not retried.
* An overall deadline (:meth:`RetryPolicy.deadline_s`) around every call, so a stuck
  server can never hang the trainer.
* Responses are read up to a size cap and parsed with ``json`` (or, for the paper's pickle
  protocol, :func:`.safe_pickle.safe_loads`, which admits plain data only): nothing received
  from the network is ever evaluated.
* A single background event loop (a daemon thread) runs the coroutines, so synchronous
  callers get a ``concurrent.futures.Future`` and local scoring overlaps the network wait.
* Replies are read (decoded, validated) off that loop, in worker threads, under the
  attempt's timeout; whatever reading a reply raises makes it a bad reply. One reply that
  is slow or breaks our parsers fails its own call only: on the loop it stalled every later
  call of the process, and its exception crashed the run (issue 25 item 4). A thread cannot
  be stopped, so the parsers themselves are linear in the reply (``safe_pickle``,
  ``unifiedreward``) and the reply size is capped: the deadline is the second line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import random
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

ON_ERROR = ("sentinel", "raise")


class RemoteRewardError(RuntimeError):
    """A remote reward could not be obtained (after the allowed retries)."""


class ResponseContractError(ValueError):
    """The server answered 200 but the body is not what the contract says."""


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts and retry budget of one remote call.

    ``timeout_s`` bounds each attempt; ``max_retries`` is the number of attempts after the
    first; backoff before retry ``k`` (0-based) is ``min(backoff_max_s, backoff_s * 2**k)``
    stretched by up to ``jitter`` (fraction).
    """

    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    jitter: float = 0.1
    # Replies are small (a UnifiedReward answer of 256 tokens < 10 KB, GenEval ~150 bytes an
    # image); reading one holds the GIL in json's parser, ~0.1 s a MB of numbers (measured
    # 0.21 s for 2.6 MB), so the cap also bounds the CPU time one reply can take.
    max_response_bytes: int = 4 * 1024 * 1024

    def __post_init__(self):
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_retries < 0 or self.max_retries > 100:
            raise ValueError(f"max_retries must be in [0, 100], got {self.max_retries}")
        if self.backoff_s < 0 or self.backoff_max_s < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff must be >= 0 and jitter in [0, 1]")

    def backoff(self, retry: int) -> float:
        base = min(self.backoff_max_s, self.backoff_s * (2**retry))
        return base * (1.0 + self.jitter * random.random())

    def deadline_s(self) -> float:
        """Upper bound of one call with all its retries (plus a little slack)."""
        attempts = self.max_retries + 1
        per_attempt = self.timeout_s + self.connect_timeout_s
        waits = sum(min(self.backoff_max_s, self.backoff_s * (2**k)) for k in range(self.max_retries))
        return attempts * per_attempt + waits * (1.0 + self.jitter) + 1.0

    def httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)


def normalize_urls(urls: str | Sequence[str]) -> list[str]:
    """One or several base URLs (``http(s)://host:port[/prefix]``), without trailing slash."""
    if isinstance(urls, str):
        urls = [u for u in urls.replace(",", " ").split() if u]
    out = []
    for url in urls:
        url = str(url).strip().rstrip("/")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        out.append(url)
    if not out:
        raise ValueError("at least one server URL is needed")
    return out


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ResponseContractError(f"response larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# Threads that read replies. Reading is linear in a capped reply, so a few suffice; a reply
# whose reading outlives its timeout keeps its thread until it ends, never the loop. One
# pool per process: a forked child inherits the pool but not its threads.
_readers: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_readers_lock = threading.Lock()


def _reader_pool() -> concurrent.futures.ThreadPoolExecutor:
    with _readers_lock:
        pid = os.getpid()
        if pid not in _readers:
            _readers.clear()
            _readers[pid] = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="precise-fast-rewards-read")
        return _readers[pid]


def _read_reply(content: bytes, decode, validate, incomplete):
    """``(value, defect)`` of a 200 reply; any failure is a :class:`ResponseContractError`."""
    try:
        if decode is not None:
            data = decode(content)
        else:
            try:
                data = json.loads(content)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ResponseContractError(f"body is not JSON ({exc}): {content[:120]!r}") from None
        value = validate(data)
        return value, (incomplete(value) if incomplete is not None else None)
    except ResponseContractError:
        raise
    except Exception as exc:  # deep nesting (RecursionError), odd types (TypeError): a bad reply, not a crash
        raise ResponseContractError(f"reply could not be read ({type(exc).__name__}: {str(exc)[:200]})") from None


async def _read_off_loop(content: bytes, timeout_s: float, *parts):
    work = functools.partial(_read_reply, content, *parts)
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(_reader_pool(), work), timeout_s)
    except TimeoutError:  # asyncio.wait_for raises the builtin on Python >= 3.11
        raise ResponseContractError(f"reading the reply took longer than {timeout_s:g}s") from None


async def post_json(
    client: httpx.AsyncClient,
    urls: Sequence[str],
    path: str,
    payload: Any,
    policy: RetryPolicy,
    validate: Callable[[Any], T],
    *,
    what: str,
    start: int = 0,
    headers: dict[str, str] | None = None,
    incomplete: Callable[[T], str | None] | None = None,
    decode: Callable[[bytes], Any] | None = None,
) -> T:
    """POST ``payload`` as JSON with retries; return ``validate(parsed_json)``.

    ``validate`` raises :class:`ResponseContractError` for a body that breaks the contract
    (retried like a server error). ``incomplete(value)`` may name a defect of a well-formed
    answer (e.g. a NaN or missing score): such an answer is retried while attempts remain,
    and the last one is returned as it is (the caller then marks the gaps invalid).
    ``decode`` replaces ``json.loads`` for another wire format (it raises
    :class:`ResponseContractError` on a bad body). The three run in a worker thread within
    the attempt's timeout, and whatever they raise counts as a bad reply. Raises
    :class:`RemoteRewardError` when every attempt failed.
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload, allow_nan=False).encode("utf-8")
    send_headers = {"content-type": "application/json", "accept": "application/json", **(headers or {})}
    failures: list[str] = []
    attempts = policy.max_retries + 1
    partial: list = []  # the latest well-formed but incomplete answer
    for attempt in range(attempts):
        url = urls[(start + attempt) % len(urls)] + path
        try:
            async with client.stream("POST", url, content=body, headers=send_headers) as response:
                content = await _read_capped(response, policy.max_response_bytes)
                status = response.status_code
            if status == 200:
                value, defect = await _read_off_loop(content, policy.timeout_s, decode, validate, incomplete)
                if defect is None or attempt + 1 == attempts:
                    return value
                partial = [value]
                failures.append(f"{url}: incomplete answer: {defect}")
            else:
                detail = content[:300].decode("utf-8", "replace")
                if not _retryable_status(status):
                    raise RemoteRewardError(
                        f"{what}: {url} refused the request with HTTP {status}: {detail} (not retried)"
                    )
                failures.append(f"{url}: HTTP {status}: {detail}")
        except httpx.TimeoutException as exc:
            failures.append(f"{url}: timed out after {policy.timeout_s:g}s ({type(exc).__name__})")
        except httpx.TransportError as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
        except ResponseContractError as exc:
            failures.append(f"{url}: bad response: {exc}")
        if attempt + 1 < attempts:
            await asyncio.sleep(policy.backoff(attempt))
    if partial:
        return partial[0]
    raise RemoteRewardError(f"{what}: all {attempts} attempts failed: " + " | ".join(failures))


class BackgroundLoop:
    """One asyncio event loop in a daemon thread, shared by the remote clients."""

    _instance: BackgroundLoop | None = None
    _lock = threading.Lock()

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="precise-fast-rewards-io", daemon=True)
        self.thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def get(cls) -> BackgroundLoop:
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)
