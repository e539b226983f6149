"""A checkpoint folder is input from outside (issue 25 item 1): ``--resume`` of a crafted folder
ran code, since trainer.pt was read with ``torch.load(weights_only=False)`` and DeepSpeed reads
its own files the same way. The manifest's SHA-256s do not help: whoever writes the folder
writes the manifest. Every checkpoint file is now read by torch's weights-only unpickler
(an allow-list of types), and every ``*.pt`` of the folder is checked so before any model loads."""

import os

import pytest
import torch

from precise_fast.train.state.checkpoint import CheckpointError, CheckpointManager

from .conftest import small_config
from .test_input_errors import _run, no_model  # noqa: F401 - no_model: the fixture


class RunsCode:
    """What a crafted file holds: unpickling it calls ``os.system`` (here: create a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path, evil_file: str, *, with_config: bool) -> tuple:
    """A checkpoint folder whose manifest verifies, with ``evil_file`` carrying the pickle."""
    marker = tmp_path / "MARKER"
    cfg = small_config(tmp_path)
    payload = {"config": cfg.to_dict(), "hook": RunsCode(marker), "t": torch.zeros(2)}
    m = CheckpointManager(tmp_path / "crafted" / "checkpoints", keep_last=3, rank=0, world_size=1, barrier=lambda: None)

    def write_engine(folder):
        (folder / "state").mkdir(parents=True)
        torch.save(payload if evil_file.startswith("ds/") else {"t": torch.zeros(2)},
                   folder / "state" / "mp_rank_00_model_states.pt")

    folder = m.save(1, write_engine=write_engine,
                    trainer_state=payload if evil_file == "trainer.pt" else {"config": cfg.to_dict()},
                    rank_state=payload if evil_file == "rank00000.pt" else {},
                    meta={"config": cfg.to_dict()} if with_config else None)
    return folder, marker


@pytest.mark.parametrize("evil_file,with_config", [
    ("trainer.pt", False),  # an older manifest without the config: it was read from trainer.pt
    ("trainer.pt", True),
    ("rank00000.pt", True),
    ("ds/state/mp_rank_00_model_states.pt", True),  # read by DeepSpeed's own torch.load
])
def test_a_crafted_checkpoint_is_refused_before_any_model_loads(tmp_path, capsys, dist1, no_model, evil_file,
                                                                 with_config):
    folder, marker = _crafted(tmp_path, evil_file, with_config=with_config)
    try:
        code, line = _run(tmp_path, capsys, flags=("--resume", str(folder)))
    finally:
        assert not marker.exists(), "the checkpoint's pickle ran code"
    assert code == 2
    assert f"{folder / evil_file}" in line and "posix.system" in line and "refused" in line


def test_deepspeeds_own_loads_are_weights_only_too(tmp_path):
    """Inside :func:`weights_only_loads` (around DeepSpeed's ``load_checkpoint``) a
    ``torch.load(weights_only=False)`` is refused as well, so a file swapped in after the
    pre-check cannot run code either."""
    from precise_fast.train.state.checkpoint import load_checkpoint_file, weights_only_loads

    marker = tmp_path / "MARKER"
    torch.save({"hook": RunsCode(marker)}, tmp_path / "evil.pt")
    with weights_only_loads(), pytest.raises(Exception, match="posix.system"):
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="evil.pt .*posix.system"):
        load_checkpoint_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_the_zero_optimizers_loss_scaler_loads_and_fp16s_is_refused(tmp_path):
    """The ZeRO optimizer state holds its loss scaler object (deepspeed's stage_1_and_2.py /
    stage3.py ``state_dict``): bf16's static one loads with its settings; fp16's dynamic one is
    no type our runs write (float16 training is refused), so a file holding it is refused."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler

    from precise_fast.train.state.checkpoint import load_checkpoint_file

    for dtype in (torch.bfloat16, torch.float16):
        fp16 = dtype == torch.float16
        scaler = CreateLossScaler(dtype=dtype, static_loss_scale=1.0, dynamic_scaling=fp16,
                                  dynamic_loss_args=dict(init_scale=2**16, scale_window=1000, min_scale=1,
                                                         delayed_shift=2, consecutive_hysteresis=False))
        torch.save({"loss_scaler": scaler}, tmp_path / "optim.pt")
        if fp16:
            with pytest.raises(CheckpointError, match="DynamicLossScaler"):
                load_checkpoint_file(tmp_path / "optim.pt")
        else:
            loaded = load_checkpoint_file(tmp_path / "optim.pt")["loss_scaler"]
            assert type(loaded) is type(scaler) and vars(loaded) == vars(scaler)
