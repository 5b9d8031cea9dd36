"""The oracle worker itself: one process for the session, errors reported, not hung on."""

import numpy as np
import pytest

from oracle_harness import OracleError


def test_worker_runs_the_pinned_official_stack_on_8_devices(oracle):
    _, reply = oracle("ping")
    assert reply["jax"] == "0.4.25" and reply["devices"] == 8


def test_an_official_failure_is_reported_and_the_worker_carries_on(oracle):
    # A shape the official Linear cannot shard: 12 output columns over 8 devices.
    w = np.zeros((8, 12), np.int8)
    with pytest.raises(OracleError, match="official code failed on linear"):
        oracle("linear", {"x": np.ones((1, 8), np.float32), "w/weight": w,
                          "w/scales": np.ones((1, 12), np.float32)},
               dtype="float32", row_parallel=False)
    with pytest.raises(OracleError, match="no_such_op"):
        oracle("no_such_op")
    _, reply = oracle("ping")
    assert reply["ok"]
