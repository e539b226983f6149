"""GenEval client against real HTTP servers on 127.0.0.1: our GenEval server (with an
injected detector) for the contract, scripted servers for the failure modes."""

import base64
import io
import json
import logging
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from precise_fast.rewards import (
    SENTINEL,
    MultiReward,
    RemoteRewardError,
    RetryPolicy,
    RewardModel,
    ScoreOutput,
    build_reward,
)
from precise_fast.rewards.preprocess import to_uint8
from precise_fast.rewards.remote import GenEvalClient
from precise_fast.rewards.remote.encoding import encode_array
from precise_fast.rewards.servers import geneval_server
from precise_fast.rewards.servers.geneval_logic import GenEvalScorer

from .conftest import hang_up, reply, slow
from .test_geneval_logic import SceneDetector, obj

FAST = dict(timeout_s=0.5, connect_timeout_s=0.5, max_retries=2, backoff_s=0.01, backoff_max_s=0.02)


def meta(classname="cat", count=1, tag="single_object"):
    return {"tag": tag, "include": [{"class": classname, "count": count}], "prompt": f"a photo of {count} {classname}"}


def scene_images(ids, size=24):
    """Images whose top-left red value names the detector scene (PNG keeps it exact)."""
    x = torch.rand(len(ids), 3, size, size, generator=torch.Generator().manual_seed(0))
    for i, scene in enumerate(ids):
        x[i, 0, 0, 0] = scene / 255.0
    return x


@pytest.fixture
def geneval_url():
    """Our GenEval server on 127.0.0.1 with a scripted detector."""
    scenes = {
        0: {"cat": [obj(0, 0, 10, 10)]},  # one cat
        1: {},  # nothing
        2: {"cup": [obj(i * 5, 0, i * 5 + 4, 4) for i in range(2)]},  # two cups
    }
    detector = SceneDetector(scenes)
    scorer = GenEvalScorer(detector, lambda image, objects, name: ["red"] * len(objects))
    server = geneval_server.make_server(scorer, "127.0.0.1", 0, max_images=8, max_body_bytes=2_000_000)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.url, detector
    server.shutdown()
    server.server_close()


def test_end_to_end_with_our_server(geneval_url):
    url, detector = geneval_url
    # The scene detector reads each image's scene id from its pixels: lossless PNG on the wire.
    client = GenEvalClient(url, batch_size=2, image_format="png", **FAST)  # 5 images -> 3 requests
    ids = [0, 1, 2, 0, 2]
    metas = [meta("cat"), meta("cat"), meta("cup", 3, "counting"), meta("cat"), meta("cup", 2, "counting")]
    out = client(scene_images(ids), ["p"] * 5, metas)
    assert detector.calls == 3
    assert out.valid.all()
    torch.testing.assert_close(out.scores, torch.tensor([1.0, 0.0, 2 / 3, 1.0, 1.0]))
    torch.testing.assert_close(out.extras["geneval_strict"], torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(out.extras["geneval_correct"], torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0]))
    strict = GenEvalClient(url, reward="strict", only_strict=True, image_format="png", **FAST)(
        scene_images(ids), ["p"] * 5, metas)
    torch.testing.assert_close(strict.scores, torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0]))
    assert (strict.extras["geneval_correct"] == SENTINEL).all()  # not computed with only_strict


def test_through_build_reward(geneval_url):
    url, _ = geneval_url
    reward = build_reward({"geneval": {"urls": [url], "image_format": "png", **FAST}})
    assert reward.remote
    result = reward(scene_images([0, 1]), ["a", "b"], [meta(), meta()])
    assert result.combined.tolist() == [1.0, 0.0] and result.valid.all()


def test_request_contract(scripted_server):
    server = scripted_server(
        reply(200, {"version": 1, "results": [{"score": 0.5, "strict_correct": False, "correct": True}] * 2})
    )
    images = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(1))
    metas = [meta("cat"), {**meta("dog"), "include": [{"class": "dog", "count": np.int64(1)}]}]
    GenEvalClient(server.url, image_format="png", **FAST)(images, ["x", "y"], metas)
    (request,) = server.requests
    assert request["path"] == "/v1/geneval"
    assert request["headers"]["content-type"] == "application/json"
    body = request["json"]
    assert body["version"] == 1 and body["image_format"] == "png" and body["only_strict"] is False
    assert body["metadata"][0] == metas[0] and body["metadata"][1]["include"][0]["count"] == 1
    for b64, image in zip(body["images"], to_uint8(images).permute(0, 2, 3, 1).numpy()):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
        np.testing.assert_array_equal(decoded, image)  # PNG: lossless, exactly our pixels


def test_jpeg_option(scripted_server):
    server = scripted_server(reply(200, {"results": [{"score": 1.0}]}))
    GenEvalClient(server.url, image_format="jpeg", jpeg_quality=90, **FAST)(torch.rand(1, 3, 16, 16), ["x"], [meta()])
    body = server.requests[0]["json"]
    assert body["image_format"] == "jpeg"
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).format == "JPEG"


def test_server_down_gives_sentinels_after_bounded_retries(dead_url, caplog):
    client = GenEvalClient(dead_url, **FAST)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="precise_fast.rewards"):
        out = client(torch.rand(3, 3, 8, 8), ["a"] * 3, [meta()] * 3)
    assert time.monotonic() - start < 5
    assert not out.valid.any() and (out.scores == SENTINEL).all()
    assert "3 attempts failed" in caplog.text
    with pytest.raises(RemoteRewardError, match="ConnectError"):
        GenEvalClient(dead_url, on_error="raise", **FAST)(torch.rand(1, 3, 8, 8), ["a"], [meta()])


def test_slow_server_times_out_and_another_url_answers(scripted_server):
    stuck = scripted_server(slow(5.0, reply(200, {"results": [{"score": 1.0}]})))
    healthy = scripted_server(reply(200, {"results": [{"score": 0.25}]}))
    client = GenEvalClient([stuck.url, healthy.url], **{**FAST, "timeout_s": 0.3})
    start = time.monotonic()
    out = client(torch.rand(1, 3, 8, 8), ["a"], [meta()])
    assert time.monotonic() - start < 3
    assert out.valid.all() and out.scores.item() == 0.25
    assert len(stuck.requests) == 1 and len(healthy.requests) == 1


def test_slow_server_alone_is_bounded(scripted_server):
    stuck = scripted_server(slow(5.0, reply(200, {"results": [{"score": 1.0}]})))
    policy = {**FAST, "timeout_s": 0.2, "max_retries": 1}
    start = time.monotonic()
    out = GenEvalClient(stuck.url, **policy)(torch.rand(2, 3, 8, 8), ["a"] * 2, [meta()] * 2)
    assert time.monotonic() - start < 2.5
    assert not out.valid.any() and len(stuck.requests) == 2


def test_500_is_retried(scripted_server):
    server = scripted_server(reply(500, {"error": "cuda oom"}), reply(200, {"results": [{"score": 0.75}]}))
    out = GenEvalClient(server.url, **FAST)(torch.rand(1, 3, 8, 8), ["a"], [meta()])
    assert out.scores.item() == 0.75 and len(server.requests) == 2


def test_malformed_answers_are_retried_then_sentinel(scripted_server):
    for bad in (b"<html>proxy error</html>", {"results": "nope"}, {"results": [{"score": 1.0}] * 3}, {"scores": [1.0]}):
        server = scripted_server(reply(200, bad))
        out = GenEvalClient(server.url, **FAST)(torch.rand(1, 3, 8, 8), ["a"], [meta()])
        assert not out.valid.any() and len(server.requests) == 3, bad
    # A dropped connection is a transport error: retried too.
    server = scripted_server(hang_up, reply(200, {"results": [{"score": 0.5}]}))
    assert GenEvalClient(server.url, **FAST)(torch.rand(1, 3, 8, 8), ["a"], [meta()]).scores.item() == 0.5


def test_nan_or_missing_scores(scripted_server):
    nan_body = b'{"results": [{"score": NaN}, {"score": 0.5}, {}, {"score": null}]}'
    server = scripted_server(reply(200, nan_body))
    out = GenEvalClient(server.url, **FAST)(torch.rand(4, 3, 8, 8), ["a"] * 4, [meta()] * 4)
    assert len(server.requests) == 3  # retried: a transient fault may clear
    assert out.valid.tolist() == [False, True, False, False]
    assert out.scores.tolist() == [SENTINEL, 0.5, SENTINEL, SENTINEL]
    # A retry that comes back complete is used.
    server = scripted_server(
        reply(200, nan_body), reply(200, {"results": [{"score": s} for s in (0.1, 0.2, 0.3, 0.4)]})
    )
    out = GenEvalClient(server.url, **FAST)(torch.rand(4, 3, 8, 8), ["a"] * 4, [meta()] * 4)
    assert out.valid.all() and len(server.requests) == 2
    server = scripted_server(reply(200, nan_body))
    with pytest.raises(RemoteRewardError, match="no usable"):
        GenEvalClient(server.url, on_error="raise", **FAST)(torch.rand(4, 3, 8, 8), ["a"] * 4, [meta()] * 4)


def test_client_errors_are_not_retried(scripted_server):
    server = scripted_server(reply(400, {"error": "metadata[0]: unknown class"}))
    with pytest.raises(RemoteRewardError, match="HTTP 400.*unknown class"):
        GenEvalClient(server.url, on_error="raise", **FAST)(torch.rand(1, 3, 8, 8), ["a"], [meta()])
    assert len(server.requests) == 1


def test_remote_rewards_need_urls():
    with pytest.raises(ValueError, match="urls"):
        build_reward("geneval")


def test_bad_metadata_is_rejected_before_sending():
    client = GenEvalClient("http://127.0.0.1:9", **FAST)
    with pytest.raises(ValueError, match="metadata\\[1\\]"):
        client(torch.rand(2, 3, 8, 8), ["a", "b"], [meta(), {"prompt": "x"}])


def test_server_rejects_bad_requests(geneval_url):
    url, _ = geneval_url

    def post(payload, raw=None):
        data = raw if raw is not None else json.dumps(payload).encode()
        req = urllib.request.Request(url + "/v1/geneval", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    good_image = encode_array(np.zeros((8, 8, 3), np.uint8), "png")
    ok, body = post({"images": [good_image], "metadata": [meta()]})
    assert ok == 200 and len(body["results"]) == 1
    assert post(None, raw=b"not json")[0] == 400
    assert post({"images": [good_image], "metadata": []})[0] == 400
    assert "unicorn" in post({"images": [good_image], "metadata": [meta("unicorn")]})[1]["error"]
    assert post({"images": ["%%%"], "metadata": [meta()]})[0] == 400
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    assert (
        "PNG or JPEG" in post({"images": [base64.b64encode(gif.getvalue()).decode()], "metadata": [meta()]})[1]["error"]
    )
    assert post({"images": [good_image] * 9, "metadata": [meta()] * 9})[0] == 400  # max_images=8
    assert post({"images": [good_image], "metadata": [meta()], "version": 2})[0] == 400
    assert post(None, raw=b"x" * 2_000_001)[0] == 413  # max_body_bytes=2e6
    # Far too large: answered from the headers alone, before any body is read.
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("POST", "/v1/geneval")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_detector_unavailable_is_reported():
    server = geneval_server.make_server(
        None, "127.0.0.1", 0, unavailable="mmdet cannot be imported (No module named 'mmdet')"
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with pytest.raises(RemoteRewardError, match="detector unavailable: mmdet cannot be imported"):
            GenEvalClient(server.url, on_error="raise", **FAST)(torch.rand(1, 3, 8, 8), ["a"], [meta()])
        out = GenEvalClient(server.url, **FAST)(torch.rand(1, 3, 8, 8), ["a"], [meta()])
        assert not out.valid.any()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "/health", timeout=5)
        assert err.value.code == 503
    finally:
        server.shutdown()
        server.server_close()


def test_real_detector_without_mmdet_is_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    try:
        import mmdet  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("mmdet is installed here")
    with pytest.raises(geneval_server.DetectorUnavailable, match="requirements-geneval.txt"):
        geneval_server.MMDetDetector(tmp_path / "cfg.py", tmp_path / "ckpt.pth", device="cpu")


def test_server_binds_to_loopback_by_default():
    args = geneval_server.parse_args([])
    assert args.host == "127.0.0.1" and args.port == geneval_server.DEFAULT_PORT


def test_remote_overlaps_local_inside_multireward(scripted_server):
    # The server answers after 0.5 s; a local scorer taking 0.5 s runs meanwhile, so the
    # whole batch takes well under the 1.0 s a sequential run would.
    server = scripted_server(slow(0.5, reply(200, {"results": [{"score": 1.0}] * 2})))

    class SlowLocal(RewardModel):
        name = "local"

        def __call__(self, images, prompts, metadata):
            time.sleep(0.5)
            return ScoreOutput.from_scores(torch.ones(len(prompts)))

    reward = MultiReward({"geneval": GenEvalClient(server.url, **{**FAST, "timeout_s": 2.0}), "local": SlowLocal()})
    reward(torch.rand(2, 3, 8, 8), ["a", "b"], [meta(), meta()])  # warm the event loop / encoder
    start = time.monotonic()
    result = reward(torch.rand(2, 3, 8, 8), ["a", "b"], [meta(), meta()])
    elapsed = time.monotonic() - start
    assert result.valid.all() and result.combined.tolist() == [2.0, 2.0]
    assert 0.5 <= elapsed < 0.9, elapsed


def test_retry_policy_bounds():
    policy = RetryPolicy(
        timeout_s=1.0, connect_timeout_s=0.5, max_retries=3, backoff_s=0.5, backoff_max_s=1.0, jitter=0.0
    )
    assert policy.deadline_s() == pytest.approx(4 * 1.5 + (0.5 + 1.0 + 1.0) + 1.0)
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(timeout_s=0)


def test_server_entry_point_reports_why_the_detector_is_unavailable(tmp_path, dead_url):
    """The real command line: with no checkpoints it still serves, and says why it cannot score."""
    import os
    import subprocess
    import sys

    port = int(dead_url.rsplit(":", 1)[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "precise_fast.rewards.servers.geneval_server",
            "--port",
            str(port),
            "--model-root",
            str(tmp_path),
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            except urllib.error.HTTPError as err:
                assert err.code == 503
                body = json.loads(err.read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert "detector unavailable" in body["error"] and "mask2former" in body["error"]
        out = GenEvalClient(f"http://127.0.0.1:{port}", **FAST)(torch.rand(1, 3, 8, 8), ["a"], [meta()])
        assert not out.valid.any()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_open_clip_colour_classifier_on_a_tiny_model(model_root, tiny_arch):
    import open_clip

    from precise_fast import model_paths
    from precise_fast.rewards.servers.geneval_logic import COLORS

    ckpt = model_root / model_paths.HPS_CHECKPOINT  # any open_clip state dict of that architecture
    classify = geneval_server.OpenClipColorClassifier(ckpt, arch=tiny_arch, device="cpu")
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:40, 16:48] = True
    objects = [(np.array([16, 8, 48, 40, 0.9]), mask), (np.array([0, 0, 64, 64, 0.9]), None)]
    colors = classify(image, objects, "cup")
    assert len(colors) == 2 and set(colors) <= set(COLORS)
    # The unmasked object, by hand: templates averaged per colour (GenEval / clip_benchmark).
    model, _, transform = open_clip.create_model_and_transforms(tiny_arch, pretrained=str(ckpt))
    tokenizer = open_clip.get_tokenizer(tiny_arch)
    with torch.no_grad():
        weights = []
        for c in COLORS:
            t = model.encode_text(
                tokenizer([f"a photo of a {c} cup", f"a photo of a {c}-colored cup", f"a photo of a {c} object"])
            )
            t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
            weights.append(t / t.norm())
        f = model.encode_image(transform(image).unsqueeze(0))
        f = f / f.norm(dim=-1, keepdim=True)
    assert colors[1] == COLORS[int((f @ torch.stack(weights, 1)).argmax())]
    # The mask paints the background grey: same as compositing first and cropping unmasked.
    grey = Image.new("RGB", (64, 64), "#999")
    composited = Image.composite(image, grey, Image.fromarray(mask))
    box_only = (objects[0][0], None)
    assert classify(image, [objects[0]], "cup") == classify(composited, [box_only], "cup")
