"""The restricted unpickler that decodes the paper's GenEval replies.

The paper's server answers ``pickle.dumps`` of plain lists and dicts
(Tencent-Hunyuan/Precise ``precise_sde/rewards/servers/geneval/app.py``, values from
``gen_eval.py`` ``compute_geneval``); anything that names a global must be refused before
it runs.
"""

import os
import pickle

import pytest

from precise_fast.rewards.remote.http import ResponseContractError
from precise_fast.rewards.remote.safe_pickle import UnsafePickleError, safe_loads


class _WritesAFile:
    """A payload that runs code on unpickling: ``exec`` writes a marker file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


class _Plain:
    pass


PAPER_REPLY = {
    "scores": [0.75, 1.0, 0],
    "rewards": [0.0, 1.0, 0.0],
    "strict_rewards": [0.0, 1.0, 0.0],
    "group_rewards": {"single_object": [-10.0, 1.0, -10.0], "counting": [0.0, -10.0, 0.0]},
    "group_strict_rewards": {"single_object": [-10.0, 1.0, -10.0], "counting": [0.0, -10.0, 0.0]},
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips_under_every_protocol(protocol):
    value = {**PAPER_REPLY, "misc": (b"\x00\xff", "tëxt", None, True, 2**70, {1, 2}, frozenset({"a"}), -1.5e300)}
    assert safe_loads(pickle.dumps(value, protocol=protocol)) == value


def test_malicious_payload_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps({"scores": [_WritesAFile(marker)]})
    with pytest.raises(UnsafePickleError, match=r"refused to unpickle builtins\.exec"):
        safe_loads(payload)
    assert not marker.exists()
    # The payload is live: the stdlib unpickler does run it (which is why we never call it).
    pickle.loads(payload)  # noqa: S301 - our own payload, to prove the test is meaningful
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize(
    "value",
    [os.system, _Plain(), pickle.PickleError("x"), complex(1, 2), range(3)],
    ids=["function", "instance", "exception", "complex", "range"],
)
def test_every_global_is_refused(value):
    with pytest.raises(UnsafePickleError, match="refused to unpickle"):
        safe_loads(pickle.dumps(value))


def test_garbage_is_a_contract_error_not_a_crash():
    for body in (b"", b"not a pickle", pickle.dumps([1, 2])[:-3], b"<html>500</html>"):
        with pytest.raises(ResponseContractError):
            safe_loads(body)
    with pytest.raises(TypeError):
        safe_loads("text")
