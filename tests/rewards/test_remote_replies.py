"""Hostile or broken replies against the one shared event loop (issue 25 item 4).

Every remote reward call runs its coroutine on one background event loop. Reading a reply
(decoding, validating, parsing) used to run on that loop, where the request timeout cannot
interrupt it: one reply that took minutes to parse stalled every later call of the process,
and a reply our code could not digest (a RecursionError from deeply nested JSON, a
TypeError from a message part that is not text) escaped as a crash of the run. Now a
reply is read in a worker thread under the attempt's timeout, anything it raises is a bad
reply (retried, then the sentinel), and the loop stays free for the other calls.
"""

import time

import httpx
import pytest
import torch

from precise_fast.rewards.remote import UnifiedRewardClient
from precise_fast.rewards.remote.http import BackgroundLoop, RemoteRewardError, RetryPolicy, post_json

from .conftest import reply
from .test_remote_unifiedreward import FAST, chat

GOOD = "Alignment Score (1-5): 4\nCoherence Score (1-5): 4\nStyle Score (1-5): 4"


def _call(url: str, policy: RetryPolicy, decode=None):
    async def run():
        async with httpx.AsyncClient(timeout=policy.httpx_timeout(), trust_env=False) as client:
            return await post_json(client, [url], "/x", {"q": 1}, policy, lambda data: data, what="probe",
                                   decode=decode)

    return BackgroundLoop.get().submit(run())


def test_a_slow_reply_fails_its_own_call_and_never_delays_the_others(scripted_server):
    """A reply whose reading blocks for 3 s (any work the timeout could not stop before):
    its call fails after its 0.5 s timeout, and a call made meanwhile is answered at once."""
    slow_server = scripted_server(reply(200, b"slow"))
    good_server = scripted_server(reply(200, {"ok": True}))
    policy = RetryPolicy(timeout_s=0.5, connect_timeout_s=0.5, max_retries=0)

    def blocking_decode(body):
        time.sleep(3.0)
        return {"late": True}

    start = time.monotonic()
    slow = _call(slow_server.url, policy, decode=blocking_decode)
    time.sleep(0.2)  # the slow reply is being read now
    good_start = time.monotonic()
    assert _call(good_server.url, policy).result(timeout=10) == {"ok": True}
    assert time.monotonic() - good_start < 1.0, "the shared loop was held by another call's reply"
    with pytest.raises(RemoteRewardError, match="took longer than 0.5s"):
        slow.result(timeout=10)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("body", [
    b"[" * 100_000,  # json.loads: RecursionError
    chat([{"type": "text", "text": 5}]),  # a text part that is not text: TypeError
    chat([None, {"text": ["a"]}]),
], ids=["deep-json", "number-part", "list-part"])
def test_a_reply_our_code_cannot_read_is_a_bad_reply_not_a_crash(scripted_server, body):
    server = scripted_server(reply(200, body), reply(200, chat(GOOD)))
    client = UnifiedRewardClient(server.url, **{**FAST, "max_retries": 0})
    out = client(torch.rand(1, 3, 8, 8), ["x"], None)
    assert not out.valid.any()
    out = client(torch.rand(1, 3, 8, 8), ["x"], None)  # the next call of the process still works
    assert out.valid.all() and out.scores.item() == pytest.approx(0.8)


def test_after_a_degenerate_reply_the_next_call_succeeds_in_time(scripted_server):
    """The issue's case: a model answer that degenerates into a run of markdown, then a
    normal call through the same loop, which must finish within its own timeout."""
    degenerate = scripted_server(reply(200, chat("**Alignment Score (1-5):" + "*" * 400)))
    normal = scripted_server(reply(200, chat(GOOD)))
    first = UnifiedRewardClient(degenerate.url, **{**FAST, "max_retries": 0}).submit(
        torch.rand(1, 3, 8, 8), ["x"], None)
    time.sleep(0.2)
    start = time.monotonic()
    out = UnifiedRewardClient(normal.url, **FAST)(torch.rand(1, 3, 8, 8), ["x"], None)
    assert out.valid.all() and time.monotonic() - start < FAST["timeout_s"] + 1.0
    assert not first.result(timeout=10).valid.any()



def test_an_oversized_reply_is_refused_unread(scripted_server):
    """The default cap (4 MiB) bounds what a reply can cost to read; a larger one is a bad reply."""
    huge = chat(GOOD + " " * (5 * 1024 * 1024))
    server = scripted_server(reply(200, huge))
    with pytest.raises(RemoteRewardError, match="larger than 4194304 bytes"):
        UnifiedRewardClient(server.url, on_error="raise", **{**FAST, "max_retries": 0})(
            torch.rand(1, 3, 8, 8), ["x"], None)
