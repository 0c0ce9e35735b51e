"""--resume over a run folder whose random-state pickle was replaced by one that would run
code when unpickled: it is not run, and the user is warned, naming the file (accelerate
only logs "Could not load random states" at INFO)."""

from __future__ import annotations

import logging
import pickle

import pytest
from accelerate.logging import get_logger

from students.rundir import rng_state_problem
from students.trainer import train
from tests.support.distill import distill_cfg, interrupted_at_epoch, tiny_data

pytestmark = pytest.mark.usefixtures("one_thread")


class Planted:
    """Unpickling this runs ``open(marker, 'w')``: code, not data."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_rng_pickle_is_not_run_and_is_warned_about(tmp_path, caplog):
    data = tiny_data(tmp_path / "data", n=32)
    out = tmp_path / "run"
    with interrupted_at_epoch(1), pytest.raises(KeyboardInterrupt):
        train(distill_cfg(out, data))
    rng = out / "last" / "random_states_0.pkl"
    assert rng.is_file() and rng_state_problem(out / "last", 0) == ""  # a genuine one loads
    marker = tmp_path / "ran"
    rng.write_bytes(pickle.dumps({"random_state": Planted(str(marker))}))
    get_logger("students.recipe")  # accelerate's adapter over the module logger
    caplog.set_level(logging.WARNING, logger="students.recipe")
    train(distill_cfg(out, data), resume=True)
    assert not marker.exists()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(rng) in m and "does not load as plain data" in m and "nothing in it runs" in m
               for m in warned), warned
    state = (out / "last" / "trainer_state.json").read_text()
    assert '"finished": true' in state
