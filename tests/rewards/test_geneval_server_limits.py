"""Our GenEval server under hostile requests and connections (issue 25 item 5), on 127.0.0.1.

Seen before the fix: a per-image pixel limit only, so 32 large images in a 91 KiB body
decoded to 4.4 GB, and requests decoded side by side outside the model lock multiplied
that; no idle timeout, so 400 stalled connections held 400 threads. Now the images'
declared sizes (PIL reads them from the headers, without decoding) are summed and checked
against a per-request budget and an in-flight budget before any pixel is decoded, idle
connections are closed, and the connection threads are capped.
"""

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image, ImageFile

from precise_fast.rewards.servers import geneval_server
from precise_fast.rewards.servers.geneval_logic import GenEvalScorer

from .test_geneval_logic import SceneDetector, obj

SIDE = 64
PIXELS = SIDE * SIDE


def png(side=SIDE) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (0, 0, 0)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def meta():
    return {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}


class GatedDetector(SceneDetector):
    """Holds each scoring call until the test opens the gate."""

    def __init__(self):
        super().__init__({0: {"cat": [obj(0, 0, 10, 10)]}})
        self.gate = threading.Event()
        self.entered = threading.Event()

    def detect(self, images):
        self.entered.set()
        assert self.gate.wait(10)
        return super().detect(images)


@pytest.fixture
def serve():
    servers = []

    def start(detector=None, **limits):
        detector = detector or SceneDetector({0: {"cat": [obj(0, 0, 10, 10)]}})
        scorer = GenEvalScorer(detector, lambda image, objects, name: ["red"] * len(objects))
        server = geneval_server.make_server(scorer, "127.0.0.1", 0, **limits)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def post(url, images, timeout=10, pad=0):
    data = (json.dumps({"images": images, "metadata": [meta()] * len(images)}) + " " * pad).encode()
    req = urllib.request.Request(url + "/v1/geneval", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def decodes(monkeypatch):
    """Counts pixel decodes (PIL decodes lazily, in the first ``load``; ``open`` reads the header)."""
    count = [0]
    original = ImageFile.ImageFile.load

    def counting(self):
        count[0] += bool(self.tile)  # the tiles still to decode; empty once decoded
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return count


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(serve, decodes):
    server = serve(max_pixels=PIXELS, max_request_pixels=3 * PIXELS, max_inflight_pixels=3 * PIXELS)
    status, body = post(server.url, [png()] * 4)
    assert status == 413, body
    assert f"{4 * PIXELS} pixels" in body["error"] and f"{3 * PIXELS}" in body["error"]
    assert decodes[0] == 0, "images were decoded before the budget was checked"
    status, body = post(server.url, [png()] * 3)  # at the budget: served
    assert status == 200 and len(body["results"]) == 3 and decodes[0] == 3


def test_the_default_budget_refuses_the_issues_request(serve, decodes):
    """The issue's request: 32 large images in a small body. 4096x4096 each is within the
    per-image limit; 32 of them are 537 M pixels, far over the per-request default."""
    big = png(4096)
    assert len(big) < 200_000  # a solid image compresses to almost nothing
    server = serve(max_body_bytes=32 * len(big) + 100_000, max_images=64)
    status, body = post(server.url, [big] * 32, timeout=30)
    assert status == 413 and "pixels" in body["error"], body
    assert decodes[0] == 0


def test_requests_in_flight_share_one_pixel_budget(serve, decodes):
    detector = GatedDetector()
    server = serve(detector, max_pixels=PIXELS, max_request_pixels=2 * PIXELS, max_inflight_pixels=3 * PIXELS,
                   queue_wait_s=0.2)
    first = {}
    worker = threading.Thread(target=lambda: first.update(result=post(server.url, [png()] * 2)), daemon=True)
    worker.start()
    assert detector.entered.wait(10)  # the first request holds 2 of the 3 budgeted images
    before = decodes[0]
    start = time.monotonic()
    status, body = post(server.url, [png()] * 2)
    assert status == 503 and "in flight" in body["error"], body
    assert time.monotonic() - start < 2.0 and decodes[0] == before, "refused only after decoding"
    detector.gate.set()
    worker.join(10)
    assert first["result"][0] == 200
    assert post(server.url, [png()] * 2)[0] == 200  # the budget came back


def test_request_bodies_in_flight_share_one_byte_budget(serve):
    """Bodies wait in memory while their requests are decoded and scored: their bytes in
    flight are budgeted too, and a body that does not fit is refused before it is read."""
    detector = GatedDetector()
    server = serve(detector, max_body_bytes=50_000, max_inflight_body_bytes=60_000, queue_wait_s=0.2)
    first = {}
    worker = threading.Thread(target=lambda: first.update(result=post(server.url, [png()], pad=40_000)),
                              daemon=True)
    worker.start()
    assert detector.entered.wait(10)
    status, body = post(server.url, [png()], pad=30_000)
    assert status == 503 and "body bytes in flight" in body["error"], body
    detector.gate.set()
    worker.join(10)
    assert first["result"][0] == 200
    assert post(server.url, [png()], pad=30_000)[0] == 200


def test_idle_connections_are_closed(serve):
    server = serve(idle_timeout_s=0.3)
    host, port = server.server_address[:2]
    silent = socket.create_connection((host, port), timeout=5)
    partial = socket.create_connection((host, port), timeout=5)
    partial.sendall(b"POST /v1/geneval HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # the body never comes
    start = time.monotonic()
    assert silent.recv(1024) == b""  # closed by the server
    reply = b""
    while chunk := partial.recv(1024):
        reply += chunk
    assert time.monotonic() - start < 3.0
    silent.close()
    partial.close()


def test_connection_threads_are_capped(serve):
    server = serve(max_threads=4, idle_timeout_s=1.0)
    host, port = server.server_address[:2]
    before = threading.active_count()
    stalled = [socket.create_connection((host, port), timeout=5) for _ in range(40)]
    time.sleep(0.3)
    assert threading.active_count() - before <= 4
    # Connections past the cap are answered at once (503), not queued behind the stalled ones.
    refused = stalled[-1].recv(1024)
    assert refused.startswith(b"HTTP/1.1 503") and b"busy" in refused
    for sock in stalled:
        sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, _ = post(server.url, [png()])
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200
    assert threading.active_count() - before <= 4
