"""Talking to the paper's reward servers.

GenEval: a real HTTP server on 127.0.0.1 that speaks the wire format of
Tencent-Hunyuan/Precise ``precise_sde/rewards/servers/geneval/app.py`` (pickled dict in,
pickled dict out, POST on the root path, JPEG images) with the reply values of
``gen_eval.py`` ``compute_geneval``; the client side follows ``precise_sde/rewards/remote.py``
``geneval_score`` (PIL's default JPEG quality, 64 images per request,
``$PRECISE_SDE_GENEVAL_URL``). UnifiedReward: the defaults of that file's
``unifiedreward_score_v2`` and of ``servers/unified_reward/start_server.sh``.
"""

import base64
import io
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from precise_fast.rewards import RemoteRewardError, build_reward
from precise_fast.rewards.remote.geneval_paper import PaperGenEvalClient

from .test_remote_unifiedreward import FAST as UR_FAST
from .test_remote_unifiedreward import chat

FAST = dict(timeout_s=2.0, connect_timeout_s=1.0, max_retries=0, backoff_s=0.01, backoff_max_s=0.02)
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _paper_geneval(images, metadatas):
    """A stand-in detector with the paper's reply layout: a red image has the object."""
    scores, rewards, strict = [], [], []
    groups = {t: [] for t in TAGS}
    for image, meta in zip(images, metadatas):
        red = np.asarray(image)[..., 0].mean() > 128
        scores.append(1.0 if red else 0.5)
        strict.append(1.0 if red else 0.0)
        rewards.append(1.0 if red else 0.0)
        for t in TAGS:
            groups[t].append(strict[-1] if t == meta["tag"] else -10.0)
    return {"scores": scores, "rewards": rewards, "strict_rewards": strict,
            "group_rewards": groups, "group_strict_rewards": dict(groups)}


class PaperServer:
    """POST / with a pickled request, answered with a pickled reply (or a scripted body)."""

    def __init__(self, answer=None):
        self.requests = []
        self.answer = answer
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                data = pickle.loads(body)  # noqa: S301 - the test's server reads our own client's bytes
                images = [Image.open(io.BytesIO(b), formats=["jpeg"]) for b in data["images"]]
                outer.requests.append({"path": self.path, "data": data, "images": images})
                if outer.answer is not None:
                    out = outer.answer
                else:
                    out = pickle.dumps(_paper_geneval(images, data["meta_datas"]))
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def paper_server():
    servers = []

    def make(answer=None):
        servers.append(PaperServer(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _images(reds):
    x = torch.zeros(len(reds), 3, 16, 16)
    for i, red in enumerate(reds):
        x[i, 0] = 1.0 if red else 0.0
        x[i, 2] = 0.0 if red else 1.0
    return x


def _meta(tag="single_object"):
    return {"tag": tag, "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}


def test_client_against_a_paper_format_server(paper_server):
    server = paper_server()
    client = PaperGenEvalClient(server.url, batch_size=2, **FAST)
    reds = [True, False, True]
    metas = [_meta(), _meta("counting"), _meta("colors")]
    out = client(_images(reds), ["p"] * 3, metas)
    assert out.valid.all()
    assert out.scores.tolist() == [1.0, 0.5, 1.0]
    assert out.extras["geneval_strict"].tolist() == [1.0, 0.0, 1.0]
    assert out.extras["geneval_correct"].tolist() == [1.0, 0.0, 1.0]
    # The client posts its chunks concurrently, so they may arrive in either order: match
    # each request to its chunk by size (64 per request in the paper; 2 here).
    by_size = {len(r["data"]["images"]): r for r in server.requests}
    assert len(server.requests) == 2 and sorted(by_size) == [1, 2]
    assert by_size[1]["data"]["meta_datas"] == metas[2:]
    first = by_size[2]
    assert first["path"] == "/"
    assert set(first["data"]) == {"images", "meta_datas", "only_strict"}
    assert first["data"]["meta_datas"] == metas[:2] and first["data"]["only_strict"] is False
    # JPEG at PIL's default quality (75), as the paper's client sends it.
    reference = io.BytesIO()
    Image.new("RGB", (16, 16)).save(reference, format="JPEG")
    assert first["images"][0].quantization == Image.open(reference).quantization


def test_strict_reward_and_env_url_through_build_reward(paper_server, monkeypatch):
    server = paper_server()
    monkeypatch.setenv("PRECISE_SDE_GENEVAL_URL", server.url)
    reward = build_reward({"geneval": {"scorer": "geneval_paper", "reward": "strict", "only_strict": True, **FAST}})
    result = reward(_images([False, True]), ["p", "p"], [_meta(), _meta()])
    assert result.per_component["geneval"].tolist() == [0.0, 1.0]
    assert server.requests[0]["data"]["only_strict"] is True


def test_malicious_reply_is_refused_without_running(paper_server, tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    server = paper_server(answer=pickle.dumps({"scores": [Evil()], "rewards": [1.0], "strict_rewards": [1.0]}))
    client = PaperGenEvalClient(server.url, on_error="raise", **FAST)
    with pytest.raises(RemoteRewardError, match=r"refused to unpickle builtins\.exec"):
        client(_images([True]), ["p"], [_meta()])
    assert len(server.requests) == 1
    assert not marker.exists()


def test_reply_of_the_wrong_shape_is_a_clear_error(paper_server):
    server = paper_server(answer=pickle.dumps({"scores": [1.0, 1.0], "rewards": [1.0], "strict_rewards": [1.0]}))
    with pytest.raises(RemoteRewardError, match="'scores' must be a list of 1 numbers"):
        PaperGenEvalClient(server.url, on_error="raise", **FAST)(_images([True]), ["p"], [_meta()])


def test_json_protocol_stays_the_default():
    from precise_fast.rewards.remote import GenEvalClient

    reward = build_reward({"geneval": {"urls": ["http://127.0.0.1:9"]}})
    client = reward.components["geneval"]
    assert type(client) is GenEvalClient and client.path == "/v1/geneval"


def test_unifiedreward_paper_defaults(scripted_server, monkeypatch):
    server = scripted_server(lambda request, s: (200, chat(
        "Alignment Score (1-5): 7\nCoherence Score (1-5): 4\nStyle Score (1-5): 5")))
    monkeypatch.delenv("PRECISE_SDE_UNIFIEDREWARD_URLS", raising=False)
    monkeypatch.setenv("PRECISE_SDE_UNIFIEDREWARD_URL", server.url + "/v1")
    reward = build_reward({"unifiedreward": dict(UR_FAST)})
    out = reward(torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0)), ["a cat"], None)
    # 7 is clamped to 5 (the paper's [0, 5] clamp), then the mean of the three over 5.
    assert out.per_component["unifiedreward"].item() == pytest.approx((5 + 4 + 5) / 3 / 5)
    body = server.requests[0]["json"]
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert body["model"] == "UnifiedReward"
    uri = body["messages"][0]["content"][0]["image_url"]["url"]
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.size == (512, 512)
    reference = io.BytesIO()
    Image.new("RGB", (8, 8)).save(reference, format="JPEG", quality=95)
    assert image.quantization == Image.open(reference).quantization


def test_unifiedreward_urls_list_wins_and_missing_urls_name_the_variables(scripted_server, monkeypatch):
    good = scripted_server(lambda request, s: (200, chat(
        "Alignment Score (1-5): 5\nCoherence Score (1-5): 5\nStyle Score (1-5): 5")))
    monkeypatch.setenv("PRECISE_SDE_UNIFIEDREWARD_URLS", f"{good.url},{good.url}/v1")
    monkeypatch.setenv("PRECISE_SDE_UNIFIEDREWARD_URL", "http://127.0.0.1:9")
    reward = build_reward({"unifiedreward": dict(UR_FAST)})
    assert reward.components["unifiedreward"].urls == [good.url, good.url]
    assert reward(torch.rand(1, 3, 8, 8), ["x"], None).per_component["unifiedreward"].item() == pytest.approx(1.0)
    monkeypatch.delenv("PRECISE_SDE_UNIFIEDREWARD_URLS")
    monkeypatch.delenv("PRECISE_SDE_UNIFIEDREWARD_URL")
    with pytest.raises(ValueError, match=r"\$PRECISE_SDE_UNIFIEDREWARD_URLS / \$PRECISE_SDE_UNIFIEDREWARD_URL"):
        build_reward({"unifiedreward": 1.0})
