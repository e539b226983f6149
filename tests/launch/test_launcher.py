"""``precise-fast train --reward R --sde S ...``: the paper's launcher selectors on our recipes.

Facts from Tencent-Hunyuan/Precise ``launch/train.sh``: rewards {mix, pickscore, geneval},
SDE types {precise, flow_grpo, cps, dance_precise, dance_grpo}, ``--noise-level``,
``--step`` (training and eval steps), ``--dry-run`` prints the command; for the geneval
reward a local server is reused when its check answers, else started, health-checked and
stopped at exit (``PRECISE_SDE_AUTO_START_GENEVAL``).
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from precise_fast import cli, launch
from precise_fast.train.config import load_config

from ..child_env import child_env
from ..eval.conftest import REPO, TINY_CONFIG

PAIRS = [(r, s) for r in launch.REWARDS for s in launch.SDES]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dry_run(capsys, monkeypatch, *argv):
    monkeypatch.chdir(REPO)
    assert cli.main(["train", "--dry-run", *argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[0]), shlex.split(lines[-1])


@pytest.mark.parametrize("reward, sde", PAIRS)
def test_dry_run_of_every_pair(reward, sde, capsys, monkeypatch):
    monkeypatch.setenv(launch.AUTO_START_ENV, "1")
    info, cmd = _dry_run(capsys, monkeypatch, "--reward", reward, "--sde", sde, "--noise-level", "0.6",
                         "--steps", "12", "--num-gpus", "4", "--", "--resume")
    recipe = f"configs/flux2_klein/{reward}_{sde}.yaml"
    assert info["recipe"] == recipe and info["overrides"] == ["sampler.eta=0.6", "sampler.num_steps=12"]
    assert cmd[0].endswith("deepspeed") and cmd[1:3] == ["--num_gpus", "4"]
    assert cmd[3:] == ["--module", "precise_fast.train", "--config", recipe, "--set", "sampler.eta=0.6",
                       "--set", "sampler.num_steps=12", "--resume"]
    cfg = load_config(REPO / recipe, info["overrides"])
    assert (cfg.sampler.kind, cfg.sampler.eta, cfg.sampler.num_steps) == (sde, 0.6, 12)
    spec = cfg.reward.spec
    assert (reward in spec) if isinstance(spec, dict) else spec == reward
    assert info["geneval_server"] == ("http://127.0.0.1:18085" if reward == "geneval" else None)


def test_defaults_are_the_recipes_and_errors_are_one_line(capsys, monkeypatch):
    info, cmd = _dry_run(capsys, monkeypatch, "--reward", "mix", "--sde", "precise", "--no-geneval-server")
    assert info["overrides"] == [] and cmd[1:3] == ["--num_gpus", "8"]
    with pytest.raises(SystemExit, match="sampler.eta: cps needs 0 <= eta <= 1"):
        cli.main(["train", "--reward", "pickscore", "--sde", "cps", "--noise-level", "1.5", "--dry-run"])
    monkeypatch.setenv(launch.AUTO_START_ENV, "0")
    info, _ = _dry_run(capsys, monkeypatch, "--reward", "geneval", "--sde", "precise")
    assert info["geneval_server"] is None


def test_cuda_visible_devices_are_the_devices_the_ranks_get(capsys, monkeypatch):
    """deepspeed ignores and drops CUDA_VISIBLE_DEVICES when given --num_gpus (it would run on
    GPUs 0..G-1): the launcher names the visible devices with --include instead."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3,5")
    _, cmd = _dry_run(capsys, monkeypatch, "--reward", "pickscore", "--sde", "precise")
    assert cmd[1:4] == ["--include", "localhost:2,3,5", "--module"]
    _, cmd = _dry_run(capsys, monkeypatch, "--reward", "pickscore", "--sde", "precise", "--num-gpus", "2")
    assert cmd[1:4] == ["--include", "localhost:2,3", "--module"]
    assert cli.main(["train", "--reward", "pickscore", "--sde", "precise", "--num-gpus", "4", "--dry-run"]) == 2
    assert "--num-gpus 4: CUDA_VISIBLE_DEVICES=2,3,5 shows 3 devices" in capsys.readouterr().err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    _, cmd = _dry_run(capsys, monkeypatch, "--reward", "pickscore", "--sde", "precise")
    assert cmd[1:3] == ["--num_gpus", "8"]


def test_config_path_still_runs_the_trainer(capsys):
    assert cli.main(["train", "--config", str(TINY_CONFIG), "--set", "train.lr=0.5", "--print-config"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


class _Health(BaseHTTPRequestHandler):
    status = 200

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        body = json.dumps({"status": "ok" if self.status == 200 else "unavailable"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(status: int):
    handler = type("H", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# A stand-in server process: answers GET /health with 200 after a short start-up.
FAKE = (
    "import sys, time, http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def log_message(self, *a): pass\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'ok')\n"
    "time.sleep(0.5)\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def test_starts_waits_for_health_and_stops_a_server():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    assert launch.health(url)[0] is False
    with launch.geneval_server(url, [sys.executable, "-c", FAKE, str(port)], poll_s=0.1) as proc:
        assert proc is not None and proc.poll() is None
        assert launch.health(url) == (True, "ok")
    assert proc.poll() is not None  # stopped at the end
    assert launch.health(url)[0] is False


def test_reuses_a_healthy_server_and_refuses_an_unhealthy_one():
    server, url = _serve(200)
    try:
        with launch.geneval_server(url, [sys.executable, "-c", "raise SystemExit(3)"]) as proc:
            assert proc is None
    finally:
        server.shutdown()
        server.server_close()
    server, url = _serve(503)
    try:
        with pytest.raises(SystemExit, match="answers but is not healthy"), launch.geneval_server(url):
            pass
    finally:
        server.shutdown()
        server.server_close()


def test_our_server_without_a_detector_is_reported_not_waited_for():
    """Ours starts, and its health check says why it cannot score (no mmdet / checkpoint here)."""
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(SystemExit, match="did not become healthy.*detector unavailable"), \
            launch.geneval_server(url, wait_s=90, poll_s=0.2):
        pass


@pytest.mark.slow
def test_the_launcher_runs_deepspeed(tmp_path, monkeypatch):
    """Not a dry run: the recipe (shrunk to the tiny model by overrides) trains one epoch under
    the real ``deepspeed`` launcher, which the launcher started."""
    import subprocess

    out = tmp_path / "run"
    tiny = ["model.path=tiny", "model.dtype=float32", "model.max_text_len=32", "model.lora_rank=4",
            "model.lora_alpha=4.0", "model.gradient_checkpointing=false", "run.device=cpu", "run.epochs=1",
            "run.num_threads=1", f"run.output_dir={out}", "sampler.height=64", "sampler.width=64",
            "sampler.batch_size=2", "sampler.num_batches_per_epoch=1", "sampler.images_per_prompt=2",
            "train.batch_size=2", "train.gradient_accumulation_steps=1", "reward.spec=jpeg_incompressibility", "prompts.train=configs/prompts/tiny_train.txt",
            "eval.every=0", "checkpoint.every=0", "log.progress=false", "log.image_every=0"]
    argv = ["train", "--reward", "mix", "--sde", "flow_grpo", "--steps", "3", "--num-gpus", "1",
            "--master-port", str(_free_port()), *[a for o in tiny for a in ("--set", o)]]
    proc = subprocess.run([sys.executable, "-m", "precise_fast.cli", *argv], env=child_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[precise_fast] done: mix_flow_grpo, 1 epochs" in proc.stdout
    saved = load_config(out / "config.yaml")
    assert (saved.sampler.kind, saved.sampler.num_steps, saved.reward.spec) == ("flow_grpo", 3, "jpeg_incompressibility")
