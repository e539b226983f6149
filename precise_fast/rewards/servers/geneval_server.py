"""GenEval reward server: JSON over HTTP around the GenEval object detector.

Optional component with its own requirements (``requirements-geneval.txt`` beside this
file: mmdet 2.x + mmcv-full, as GenEval pins them). Run it on the GPU host that serves rewards::

    python -m precise_fast.rewards.servers.geneval_server --port 18085 \\
        --detector-config /path/to/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py

It binds to 127.0.0.1 unless ``--host`` says otherwise (it has no authentication: expose
it only on a trusted network). Checkpoints come from the model root (see
``precise_fast/model_paths.py``): ``geneval/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth``
and ``geneval/open_clip_ViT-L-14-openai.bin`` (open_clip's ViT-L-14 ``openai`` weights, a
plain state dict), or explicit ``--detector-checkpoint`` / ``--clip-checkpoint`` paths.

If mmdet (or a checkpoint) is missing the server still starts and answers every scoring
request with ``503 {"error": "detector unavailable: <why>"}`` so the trainer's client
reports the cause instead of timing out.

The wire format is the JSON contract in ``precise_fast/rewards/remote/geneval.py``;
nothing received is unpickled. Requests are size-capped, images must decode as PNG or
JPEG, and the metadata is validated before the detector runs. Memory and threads are
bounded whatever clients send: the pixels each image header declares (PIL reads them
without decoding) are summed and checked against a per-request budget (413) and a budget
shared by all requests being decoded or scored (503 when it stays full for
``queue_wait_s``) before any pixel is decoded; the bodies held by all requests have a
budget of their own, taken before a body is read; connections idle for ``idle_timeout_s`` are
closed; at most ``max_threads`` connections are served at once, and the next ones get an
immediate 503 (issue 25 item 5: 32 large images in a 91 KiB body decoded to 4.4 GB, and
400 stalled connections held 400 threads).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import io
import json
import logging
import math
import os
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from ... import model_paths
from .geneval_logic import CLASS_NAMES, COLORS, GenEvalScorer, Thresholds, validate_metadata

logger = logging.getLogger("precise_fast.rewards.geneval_server")

API_PATH = "/v1/geneval"
HEALTH_PATH = "/health"
CONTRACT_VERSION = 1
DEFAULT_PORT = 18085
DETECTOR_CONFIG_NAME = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"


class DetectorUnavailable(RuntimeError):
    """The GenEval detector cannot run here (package or checkpoint missing)."""


class MMDetDetector:
    """GenEval's Mask2Former detector through mmdet (2.x tuples or 3.x data samples)."""

    def __init__(self, config: str | os.PathLike, checkpoint: str | os.PathLike, device: str = "cuda"):
        try:
            from mmdet.apis import inference_detector, init_detector
        except Exception as exc:  # ImportError, or an mmcv built for another torch
            raise DetectorUnavailable(
                f"mmdet cannot be imported ({type(exc).__name__}: {exc}); install "
                "precise_fast/rewards/servers/requirements-geneval.txt in the server's environment"
            ) from exc
        for what, path in (("detector config", config), ("detector checkpoint", checkpoint)):
            if not Path(path).is_file():
                raise DetectorUnavailable(f"{what} not found at {path}")
        self.model = init_detector(str(config), str(checkpoint), device=device)
        self._inference = inference_detector
        self.num_classes = len(CLASS_NAMES)

    def detect(self, images_rgb: list[np.ndarray]) -> list[list]:
        # GenEval hands mmdet file paths, which mmcv reads as BGR; give it BGR arrays too.
        bgr = [np.ascontiguousarray(img[..., ::-1]) for img in images_rgb]
        results = self._inference(self.model, bgr)
        return [self._per_class(result) for result in results]

    def _per_class(self, result) -> list:
        if hasattr(result, "pred_instances"):  # mmdet 3.x DetDataSample
            inst = result.pred_instances
            boxes = inst.bboxes.detach().cpu().numpy()
            scores = inst.scores.detach().cpu().numpy()
            labels = inst.labels.detach().cpu().numpy()
            masks = inst.masks.detach().cpu().numpy() if "masks" in inst else None
            out = []
            for c in range(self.num_classes):
                sel = labels == c
                out.append(
                    (np.concatenate([boxes[sel], scores[sel, None]], axis=1), None if masks is None else masks[sel])
                )
            return out
        bbox = result[0] if isinstance(result, tuple) else result
        segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        return [
            (np.asarray(bbox[c]).reshape(-1, 5), None if segm is None else segm[c]) for c in range(self.num_classes)
        ]


class OpenClipColorClassifier:
    """GenEval's colour check: CLIP ViT-L/14 (OpenAI weights) zero-shot over 10 colours.

    Prompts per colour: "a photo of a {c} {object}", "a photo of a {c}-colored {object}",
    "a photo of a {c} object"; each template embedding is normalised, averaged and
    re-normalised (the clip_benchmark zero-shot recipe GenEval uses). The crop is the
    object's box, with pixels outside its mask painted #999.
    """

    TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        arch: str = "ViT-L-14-quickgelu",
        device: str = "cuda",
        bgcolor: str = "#999",
    ):
        try:
            import open_clip
            import torch
        except Exception as exc:
            raise DetectorUnavailable(f"open_clip cannot be imported ({exc})") from exc
        if not Path(checkpoint).is_file():
            raise DetectorUnavailable(f"CLIP checkpoint for the colour check not found at {checkpoint}")
        self.torch = torch
        self.device = device
        # OpenAI's ViT-L/14 uses QuickGELU, hence the -quickgelu config for a plain state dict.
        self.model, _, self.transform = open_clip.create_model_and_transforms(
            arch, pretrained=str(checkpoint), device=device, weights_only=True
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.bgcolor = bgcolor
        self._classifiers: dict[str, object] = {}

    def _classifier(self, classname: str):
        if classname not in self._classifiers:
            torch = self.torch
            with torch.no_grad():
                weights = []
                for color in COLORS:
                    texts = [t.format(c=color, obj=classname) for t in self.TEMPLATES]
                    emb = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
                    emb = emb / emb.norm(dim=-1, keepdim=True)
                    mean = emb.mean(dim=0)
                    weights.append(mean / mean.norm())
                self._classifiers[classname] = torch.stack(weights, dim=1)
        return self._classifiers[classname]

    def __call__(self, image: Image.Image, objects, classname: str) -> list[str]:
        torch = self.torch
        image = image.convert("RGB")
        blank = Image.new("RGB", image.size, color=self.bgcolor)
        crops = []
        for box, mask in objects:
            img = (
                Image.composite(image, blank, Image.fromarray(np.asarray(mask, dtype=bool)))
                if mask is not None
                else image
            )
            crops.append(self.transform(img.crop(tuple(float(v) for v in box[:4]))))
        with torch.no_grad():
            feats = self.model.encode_image(torch.stack(crops).to(self.device)).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            pred = (feats @ self._classifier(classname)).argmax(dim=1)
        return [COLORS[int(i)] for i in pred]


# ---------------------------------------------------------------------------------------
# HTTP


class BadRequest(ValueError):
    pass


class TooLarge(ValueError):
    """Refused with 413: the request asks for more than one request may."""


class Busy(RuntimeError):
    """Refused with 503: the server is at its in-flight budget; the client retries."""


def open_image(b64, max_pixels: int) -> Image.Image:
    """The image with its header read and its pixels not yet decoded (PIL decodes lazily)."""
    if not isinstance(b64, str):
        raise BadRequest("each image must be a base64 string")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"invalid base64 ({exc})") from None
    try:
        image = Image.open(io.BytesIO(raw))
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadRequest(f"image does not decode ({type(exc).__name__}: {exc})") from None
    if image.format not in ("PNG", "JPEG"):
        raise BadRequest(f"images must be PNG or JPEG, got {image.format}")
    width, height = image.size
    if width * height > max_pixels:
        raise BadRequest(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
    return image


def decode_pixels(image: Image.Image) -> Image.Image:
    try:
        image.load()
        return image.convert("RGB")
    except Exception as exc:
        raise BadRequest(f"image does not decode ({type(exc).__name__}: {exc})") from None


class Budget:
    """Body bytes or decoded pixels held by all requests at once: a request takes its share
    before it reads or decodes, and gives it back after its reply."""

    def __init__(self, total: int):
        self.total = int(total)
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, pixels: int, wait_s: float) -> bool:
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + pixels <= self.total, timeout=wait_s):
                return False
            self.used += pixels
            return True

    def release(self, pixels: int) -> None:
        with self._cond:
            self.used -= pixels
            self._cond.notify_all()

    def hold(self, amount: int, wait_s: float, held: contextlib.ExitStack, what: str) -> None:
        """Take ``amount`` for the life of ``held``, or raise :class:`Busy`."""
        if not self.acquire(amount, wait_s):
            raise Busy(f"server busy: {self.used} of {self.total} {what} in flight left no room for {amount} "
                       f"within {wait_s:g}s; retry later")
        held.callback(self.release, amount)


_BUSY_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


class GenEvalHTTPServer(ThreadingHTTPServer):
    """``max_request_pixels``: the pixels one request may decode (the default holds 64
    images of 1024x1024; decoded RGB plus its conversion take ~6 bytes a pixel);
    ``max_inflight_pixels``: those of all requests being decoded or scored at once (two
    full requests: one on the detector, one decoding behind it); ``max_inflight_body_bytes``:
    the bodies of all requests being served (two full bodies by default)."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 leaves further connections in the kernel's SYN
    # retries for a second or more, where neither a thread nor the busy reply reaches them.
    request_queue_size = 128

    def __init__(
        self,
        address,
        scorer: GenEvalScorer | None,
        *,
        unavailable: str | None = None,
        max_body_bytes: int = 256 * 1024 * 1024,
        max_images: int = 256,
        max_pixels: int = 4096 * 4096,
        max_request_pixels: int = 64 * 1024 * 1024,
        max_inflight_pixels: int = 128 * 1024 * 1024,
        max_inflight_body_bytes: int | None = None,
        queue_wait_s: float = 30.0,
        idle_timeout_s: float = 30.0,
        max_threads: int = 32,
    ):
        if scorer is None and not unavailable:
            raise ValueError("give a scorer or the reason why the detector is unavailable")
        if max_inflight_body_bytes is None:
            max_inflight_body_bytes = 2 * max_body_bytes
        if not 0 < max_pixels <= max_request_pixels <= max_inflight_pixels:
            raise ValueError("need 0 < max_pixels <= max_request_pixels <= max_inflight_pixels")
        if not 0 < max_body_bytes <= max_inflight_body_bytes:
            raise ValueError("need 0 < max_body_bytes <= max_inflight_body_bytes")
        if idle_timeout_s <= 0 or queue_wait_s < 0 or max_threads < 1:
            raise ValueError("need idle_timeout_s > 0, queue_wait_s >= 0 and max_threads >= 1")
        super().__init__(address, _Handler)
        self.scorer = scorer
        self.unavailable = unavailable
        self.max_body_bytes = int(max_body_bytes)
        self.max_images = int(max_images)
        self.max_pixels = int(max_pixels)
        self.max_request_pixels = int(max_request_pixels)
        self.inflight_pixels = Budget(max_inflight_pixels)
        self.inflight_bytes = Budget(max_inflight_body_bytes)
        self.queue_wait_s = float(queue_wait_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self.max_threads = int(max_threads)
        self._slots = threading.BoundedSemaphore(self.max_threads)
        self.model_lock = threading.Lock()  # one batch on the GPU at a time

    def process_request(self, request, client_address):
        """One thread per connection, up to ``max_threads``; past that an immediate 503."""
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request) -> None:
        body = json.dumps({"version": CONTRACT_VERSION,
                           "error": f"server busy: {self.max_threads} connections are being served"}).encode()
        try:
            request.settimeout(1.0)  # a few hundred bytes into a fresh socket's buffer: never waits in practice
            request.sendall(_BUSY_REPLY % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def _sanitize(results: list[dict]) -> list[dict]:
    for r in results:
        score = r.get("score")
        if isinstance(score, float) and not math.isfinite(score):
            r["score"] = None
    return results


class _Handler(BaseHTTPRequestHandler):
    server: GenEvalHTTPServer
    server_version = "precise-fast-geneval/1"
    protocol_version = "HTTP/1.1"

    def setup(self):
        # Every read and write of the connection waits at most this long; http.server
        # closes a connection whose request line, headers or body stall past it.
        self.timeout = self.server.idle_timeout_s
        super().setup()

    def log_message(self, fmt, *args):  # route the access log to logging
        logger.debug("%s - %s", self.address_string(), fmt % args)

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload, allow_nan=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, {"version": CONTRACT_VERSION, "error": message})

    def do_GET(self):  # noqa: N802 - http.server naming
        if self.path != HEALTH_PATH:
            return self._error(
                HTTPStatus.NOT_FOUND, f"unknown path {self.path}; use POST {API_PATH} or GET {HEALTH_PATH}"
            )
        if self.server.scorer is None:
            return self._reply(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"status": "unavailable", "error": f"detector unavailable: {self.server.unavailable}"},
            )
        return self._reply(
            HTTPStatus.OK, {"status": "ok", "version": CONTRACT_VERSION, "classes": len(self.server.scorer.class_names)}
        )

    def _drop_body(self, length: int) -> None:
        """Read (and drop) a body we refuse, so the client sees the answer instead of a
        broken pipe; past 4x the body limit just hang up after answering."""
        if length > 4 * self.server.max_body_bytes:
            self.close_connection = True
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _read_json(self, held: contextlib.ExitStack):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # the body (if any) was not read
            raise BadRequest("a Content-Length header is required")
        if int(length) > self.server.max_body_bytes:
            self._drop_body(int(length))
            raise OverflowError(f"body of {length} bytes exceeds the limit of {self.server.max_body_bytes}")
        try:
            self.server.inflight_bytes.hold(int(length), self.server.queue_wait_s, held, "body bytes")
        except Busy:
            self._drop_body(int(length))
            raise
        body = self.rfile.read(int(length))
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"body is not JSON ({exc})") from None

    def do_POST(self):  # noqa: N802
        if self.path != API_PATH:
            return self._error(HTTPStatus.NOT_FOUND, f"unknown path {self.path}; use POST {API_PATH}")
        with contextlib.ExitStack() as held:  # this request's share of the budgets, until its reply
            try:
                payload = self._read_json(held)
                if self.server.scorer is None:
                    return self._error(HTTPStatus.SERVICE_UNAVAILABLE,
                                       f"detector unavailable: {self.server.unavailable}")
                headers, metadata, only_strict = self._parse(payload)
                self._admit(headers, held)
            except (OverflowError, TooLarge) as exc:
                return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc))
            except BadRequest as exc:
                return self._error(HTTPStatus.BAD_REQUEST, str(exc))
            except Busy as exc:
                return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
            return self._score(headers, metadata, only_strict)

    def _admit(self, headers: list, held: contextlib.ExitStack) -> None:
        """Take this request's pixels from the budgets, from the declared sizes alone."""
        pixels = sum(image.size[0] * image.size[1] for image in headers)
        if pixels > self.server.max_request_pixels:
            raise TooLarge(f"{len(headers)} images of {pixels} pixels in all exceed the limit of "
                           f"{self.server.max_request_pixels} pixels per request; send fewer per request")
        self.server.inflight_pixels.hold(pixels, self.server.queue_wait_s, held, "pixels")

    def _score(self, headers: list, metadata: list, only_strict: bool) -> None:
        try:
            images = []
            for i, image in enumerate(headers):
                try:
                    images.append(decode_pixels(image))
                except BadRequest as exc:
                    raise BadRequest(f"images[{i}]: {exc}") from None
        except BadRequest as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        try:
            with self.server.model_lock:
                results = self.server.scorer.score(images, metadata, only_strict=only_strict)
        except Exception as exc:  # the client retries 5xx; keep the traceback here
            logger.error("scoring failed:\n%s", traceback.format_exc())
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"scoring failed: {type(exc).__name__}: {exc}")
        return self._reply(HTTPStatus.OK, {"version": CONTRACT_VERSION, "results": _sanitize(results)})

    def _parse(self, payload):
        if not isinstance(payload, dict):
            raise BadRequest("the body must be a JSON object")
        version = payload.get("version", CONTRACT_VERSION)
        if version != CONTRACT_VERSION:
            raise BadRequest(f"unsupported contract version {version!r}; this server speaks {CONTRACT_VERSION}")
        images, metadata = payload.get("images"), payload.get("metadata")
        if not isinstance(images, list) or not isinstance(metadata, list):
            raise BadRequest("'images' and 'metadata' must be lists")
        if len(images) != len(metadata):
            raise BadRequest(f"{len(images)} images but {len(metadata)} metadata entries")
        if not images or len(images) > self.server.max_images:
            raise BadRequest(f"send between 1 and {self.server.max_images} images per request")
        only_strict = payload.get("only_strict", False)
        if not isinstance(only_strict, bool):
            raise BadRequest("'only_strict' must be a boolean")
        class_names = self.server.scorer.class_names
        for i, meta in enumerate(metadata):
            try:
                validate_metadata(meta, class_names)
            except ValueError as exc:
                raise BadRequest(f"metadata[{i}]: {exc}") from None
        headers = []
        for i, b64 in enumerate(images):
            try:
                headers.append(open_image(b64, self.server.max_pixels))
            except BadRequest as exc:
                raise BadRequest(f"images[{i}]: {exc}") from None
        return headers, metadata, only_strict


def make_server(
    scorer: GenEvalScorer | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT, **kwargs
) -> GenEvalHTTPServer:
    """Build (not start) the server; ``port=0`` picks a free port (see ``server.url``)."""
    return GenEvalHTTPServer((host, port), scorer, **kwargs)


def build_scorer(args) -> GenEvalScorer:
    """The real detector + colour classifier from the command-line options."""
    root = args.model_root
    detector_ckpt = args.detector_checkpoint or model_paths.locate(
        model_paths.GENEVAL_DETECTOR,
        model_root=root,
        scorer="geneval",
        what="Mask2Former checkpoint",
        hint="GenEval's evaluation/download_models.sh names the file to fetch.",
    )
    clip_ckpt = args.clip_checkpoint or model_paths.locate(
        model_paths.GENEVAL_CLIP,
        model_root=root,
        scorer="geneval",
        what="CLIP ViT-L/14 (OpenAI) weights",
        hint="Save open_clip's ViT-L-14 'openai' state dict there.",
    )
    config = args.detector_config
    if config is None:
        try:
            import mmdet
        except Exception as exc:
            raise DetectorUnavailable(f"mmdet cannot be imported ({type(exc).__name__}: {exc})") from exc
        # GenEval's default: the config shipped in an mmdetection source checkout.
        config = Path(mmdet.__file__).parent.parent / "configs" / "mask2former" / DETECTOR_CONFIG_NAME
    detector = MMDetDetector(config, detector_ckpt, device=args.device)
    colors = OpenClipColorClassifier(clip_ckpt, device=args.device)
    thresholds = Thresholds(confidence=args.threshold, counting_confidence=args.counting_threshold)
    return GenEvalScorer(detector, colors, thresholds=thresholds, failed_relation=args.failed_relation)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="GenEval reward server (JSON over HTTP)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1; the server has no authentication)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--model-root",
        default=None,
        help=f"model root (default ${model_paths.MODEL_ROOT_ENV} or {model_paths.DEFAULT_MODEL_ROOT})",
    )
    parser.add_argument("--detector-config", default=None, help=f"mmdet config ({DETECTOR_CONFIG_NAME})")
    parser.add_argument("--detector-checkpoint", default=None)
    parser.add_argument("--clip-checkpoint", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--counting-threshold", type=float, default=0.9)
    parser.add_argument("--failed-relation", choices=("paper", "zero"), default="paper",
                        help="credit of a wrong relation: paper = 0 then 1 (the paper's server), zero = 0 (corrected)")
    parser.add_argument("--max-images", type=int, default=256)
    parser.add_argument("--max-body-mb", type=int, default=256)
    parser.add_argument("--max-request-mpixels", type=int, default=64,
                        help="decoded pixels one request may hold, in 2**20 (default 64: 64 images of 1024x1024)")
    parser.add_argument("--max-inflight-mpixels", type=int, default=128,
                        help="decoded pixels of all requests at once, in 2**20 (default 128)")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="seconds before a stalled connection is closed")
    parser.add_argument("--max-threads", type=int, default=32, help="connections served at once; the next get 503")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    scorer, unavailable = None, None
    try:
        scorer = build_scorer(args)
    except (DetectorUnavailable, model_paths.WeightsNotFoundError) as exc:
        unavailable = str(exc)
        logger.error("detector unavailable, every scoring request will get HTTP 503: %s", unavailable)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "binding to %s: this server has no authentication, expose it only on a trusted network", args.host
        )
    server = make_server(
        scorer,
        args.host,
        args.port,
        unavailable=unavailable,
        max_images=args.max_images,
        max_body_bytes=args.max_body_mb * 1024 * 1024,
        max_request_pixels=args.max_request_mpixels * 1024 * 1024,
        max_inflight_pixels=args.max_inflight_mpixels * 1024 * 1024,
        idle_timeout_s=args.idle_timeout,
        max_threads=args.max_threads,
    )
    logger.info("GenEval server on %s%s", server.url, API_PATH)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
