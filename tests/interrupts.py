"""Simulated interruptions of the streamed weights table, shared by the resume tests."""

from __future__ import annotations


def interrupt_tensor_analysis(monkeypatch, table, at_call: int):
    """Make ``table.analyse_tensor`` raise KeyboardInterrupt on its ``at_call``-th call (1-based), as a
    user pressing Ctrl-C mid-run would; the calls before it complete and are checkpointed. Returns the
    real function, for the test to put back before it resumes."""
    real = table.analyse_tensor
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(table, "analyse_tensor", flaky)
    return real
