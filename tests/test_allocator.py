"""The allocator setting is applied once, can be opted out of, and never fails."""

from __future__ import annotations

import qtrain.allocator as allocator


def test_keep_freed_memory_runs_once(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    first = allocator.keep_freed_memory()
    assert isinstance(first, bool)
    assert allocator.keep_freed_memory() is False  # once per process


def test_keep_freed_memory_opt_out(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv("QTRAIN_MALLOC_TUNE", "0")
    assert allocator.keep_freed_memory() is False
