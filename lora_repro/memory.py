"""Peak memory of one run, measured on the device it trains on.

* CUDA: ``torch.cuda.max_memory_allocated`` (tensors) and ``max_memory_reserved`` (what the
  caching allocator holds), both reset when the run starts, so each run of a sweep process
  reports its own peak.
* CPU: the peak resident set size above the process's RSS when the run started (before its
  model was loaded or copied), sampled by a background thread that reads ``/proc/self/statm``
  every :data:`SAMPLE_S` seconds. ``ru_maxrss`` is not used: it is the process's all-time peak,
  so in a sweep process every run after the largest would report that run's peak. A run inside
  a longer process therefore records what it added on top of what the process already held (in
  a sequential sweep: the cached copy of the model, loaded by the first run, counts for that run
  only). Peaks shorter than the sampling period can be missed; where ``/proc`` is absent the
  CPU figure is ``None``. Before the baseline is read, freed heap memory is handed back to the
  OS (``malloc_trim``), so that memory an earlier run freed is not reused unseen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from pathlib import Path

import torch

SAMPLE_S = 0.05
MIB = 2**20


def release_free_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so that a run's RSS
    baseline does not include memory an earlier run freed (which the new run would reuse
    without the RSS growing). A no-op where glibc is absent."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int | None:
    """The resident set size of this process in bytes (``/proc/self/statm``), ``None`` without it."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return None
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Measures a run's peak memory on ``device`` between :meth:`start` and :meth:`stop`.

    ``stop()`` returns ``{"peak_mem_mb": ..., ...}`` in MiB (2²⁰ bytes): on CUDA
    ``peak_mem_mb`` is the peak allocated and ``peak_mem_reserved_mb`` the peak reserved; on the
    CPU ``peak_mem_mb`` is the peak RSS above the start (``peak_mem_kind`` says which).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline: int | None = None
        self.peak: int | None = None

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        release_free_heap()
        self.baseline = self.peak = rss_bytes()
        if self.baseline is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            now = rss_bytes()
            if now is not None and now > (self.peak or 0):
                self.peak = now

    def stop(self) -> dict[str, float | str | None]:
        """Stop sampling; the peak in MiB (see the class docstring)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {
                "peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / MIB,
                "peak_mem_reserved_mb": torch.cuda.max_memory_reserved(self.device) / MIB,
                "peak_mem_kind": "cuda max_memory_allocated since the run started",
            }
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            now = rss_bytes()
            if now is not None and now > (self.peak or 0):
                self.peak = now
        added = None if self.baseline is None else (self.peak - self.baseline) / MIB
        return {"peak_mem_mb": added, "peak_mem_kind": "cpu peak RSS above the run's start"}
