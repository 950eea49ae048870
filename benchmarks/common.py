"""Measuring helpers shared by the benchmark scripts: peak memory, machine, timing."""
from __future__ import annotations

import ctypes
import os
import platform
import threading

import torch
import torchvision

__all__ = ["PeakMemory", "load_average", "sync", "cpu_model", "machine_info", "random_images"]


class PeakMemory:
    """Peak memory rise, in MiB, over a ``with`` block (``.mib`` after the block).

    On CPU a thread samples the resident set size from ``/proc/self/statm``,
    because ``ru_maxrss`` never goes down and so cannot show a later, smaller peak.
    Memory that an earlier run freed is first handed back to the system
    (glibc's ``malloc_trim``), or the allocator would reuse it unseen.
    """

    def __init__(self, device: torch.device, interval: float = 0.02):
        self.device = device
        self.interval = interval
        self.mib = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            _trim_heap()
            self._start = _rss_bytes()
            self._peak = self._start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.mib = (peak - self._start) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_average() -> str:
    """The system's load averages: how much other processes shared the cores."""
    return "load average (1/5/15 min): " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer read after it is right."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> str:
    """One line: CPU, torch versions, threads, device, load (and GPU name)."""
    parts = [f"CPU: {cpu_model()} ({os.cpu_count()} logical cores)",
             f"torch {torch.__version__}, torchvision {torchvision.__version__}",
             f"threads: {torch.get_num_threads()}", f"device: {device}", load_average()]
    if device.type == "cuda":
        parts.append(f"GPU: {torch.cuda.get_device_name(device)}")
    return "; ".join(parts)


def random_images(n: int, size: int, seed: int) -> torch.Tensor:
    """``(n, 3, size, size)`` standard normal images, reproducible by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator)
