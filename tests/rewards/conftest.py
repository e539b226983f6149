"""Fixtures for the reward tests: tiny random-weight models saved in the real formats, and
scripted HTTP servers on 127.0.0.1.

The tiny models are written once per session under a temporary model root, in the same
layout and formats the real checkpoints use (transformers folders with config.json +
model.safetensors + processor files; an open_clip state dict under ``state_dict``; the LAION
aesthetic head as a plain ``layers.*`` state dict), and are then loaded by the production
loaders. Nothing is downloaded: the CLIP tokenizer is built from a byte-level alphabet.
"""

from __future__ import annotations

import faulthandler
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

TINY_OPEN_CLIP = "precise-fast-tiny-hps"
HANG_LIMIT_S = 120  # no reward test may run this long: dump the stacks and exit instead of hanging


@pytest.fixture(autouse=True)
def _no_hang():
    faulthandler.dump_traceback_later(HANG_LIMIT_S, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


TINY_IMAGE = 32  # tiny models see 32x32 crops (the real ones 224x224)


# ---------------------------------------------------------------------------------------
# tiny transformers CLIP models


def _tiny_clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # Byte-level alphabet, each symbol also with the end-of-word marker CLIP's BPE uses; no
    # merges, so every word is spelled out character by character.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in alphabet:
        vocab.setdefault(symbol, len(vocab))
    for symbol in alphabet:
        vocab.setdefault(symbol + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[]), len(vocab)


def _save_tiny_clip(model_dir: Path, processor_dir: Path, seed: int, logit_scale: float) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, vocab_size = _tiny_clip_tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(processor_dir)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_IMAGE,
            patch_size=8,
        ),
        projection_dim=16,
        logit_scale_init_value=math.log(logit_scale),
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    # Random init gives near-identical embeddings; spread the projections so scores differ.
    with torch.no_grad():
        model.visual_projection.weight.normal_(0, 1.0)
        model.text_projection.weight.normal_(0, 1.0)
    model.save_pretrained(model_dir)


def _save_aesthetic_head(path: Path, dim: int, seed: int) -> None:
    # Written independently of our AestheticMLP: the LAION layout is Linear, Dropout, Linear,
    # Dropout, Linear, Dropout, Linear, Linear -> keys layers.{0,2,4,6,7}.{weight,bias}.
    g = torch.Generator().manual_seed(seed)
    sizes = [(dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    state = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), sizes):
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in, generator=g) / math.sqrt(fan_in)
        state[f"layers.{index}.bias"] = torch.randn(fan_out, generator=g) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


# ---------------------------------------------------------------------------------------
# tiny open_clip model (HPS format)


def register_tiny_open_clip(directory: Path) -> str:
    import open_clip

    if TINY_OPEN_CLIP in open_clip.list_models():
        return TINY_OPEN_CLIP
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": TINY_IMAGE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        # open_clip's bundled BPE tokenizer needs the full 49408-token vocabulary.
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{TINY_OPEN_CLIP}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return TINY_OPEN_CLIP


def _save_tiny_hps(path: Path, arch: str, seed: int) -> None:
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    with torch.no_grad():
        model.visual.proj.normal_(0, 1.0)
        model.text_projection.normal_(0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    # HPSv2 checkpoints hold the model under "state_dict" (Flow-GRPO loads checkpoint['state_dict']).
    torch.save({"state_dict": model.state_dict()}, path)


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    """A model root with every local scorer's files, tiny and random."""
    from precise_fast import model_paths

    root = tmp_path_factory.mktemp("model_root")
    _save_tiny_clip(
        root / model_paths.PICKSCORE_MODEL, root / model_paths.PICKSCORE_PROCESSOR, seed=1, logit_scale=100.0
    )
    _save_tiny_clip(root / model_paths.CLIP_L14, root / model_paths.CLIP_L14, seed=2, logit_scale=100.0)
    _save_aesthetic_head(root / model_paths.AESTHETIC_HEAD, dim=16, seed=3)
    arch = register_tiny_open_clip(root / "open_clip_configs")
    _save_tiny_hps(root / model_paths.HPS_CHECKPOINT, arch, seed=4)
    return root


@pytest.fixture(scope="session")
def tiny_arch(model_root) -> str:
    return TINY_OPEN_CLIP


@pytest.fixture
def images():
    """Six 48x64 images in [0, 1] (non-square on purpose: exercises resize + crop)."""
    g = torch.Generator().manual_seed(7)
    base = torch.rand(6, 3, 12, 16, generator=g)
    # Smooth-ish content (upsampled) plus a little noise, like decoded images.
    x = torch.nn.functional.interpolate(base, size=(48, 64), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture
def prompts():
    # Repeated prompts on purpose: GRPO scores several images per prompt.
    return ["a red cube", "two cats on a bench", "a red cube", "a photo of a dog", "two cats on a bench", "sunset"]


# ---------------------------------------------------------------------------------------
# scripted HTTP servers on 127.0.0.1


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 whose answers follow a script.

    ``script`` is a list of steps used in order (the last one repeats); a step is a callable
    ``step(request) -> (status, body_bytes_or_obj)`` or one of the helpers below. Every
    request is recorded (path, headers, parsed JSON body). Sleeps wake up at teardown.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                request = {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "json": parsed,
                    "time": time.monotonic(),
                }
                with outer._lock:
                    outer.requests.append(request)
                    step = outer.script[min(len(outer.requests) - 1, len(outer.script) - 1)]
                result = step(request, outer)
                if result is None:  # drop the connection without an answer
                    self.close_connection = True
                    return
                status, payload = result
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(status: int, payload):
    return lambda request, server: (status, payload)


def slow(seconds: float, then):
    def step(request, server):
        server.stop.wait(seconds)
        return then(request, server)

    return step


def hang_up(request, server):
    return None


@pytest.fixture
def scripted_server():
    servers = []

    def make(*script):
        server = ScriptedServer()
        server.script = list(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def dead_url() -> str:
    """A 127.0.0.1 URL where nothing listens (the port was bound, then released)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
