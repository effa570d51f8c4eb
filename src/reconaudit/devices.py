"""Device selection: CUDA when available, else CPU; overridable by config."""

from __future__ import annotations

import torch


def resolve_device(device: str | None = "auto") -> torch.device:
    """Map ``"auto"`` / ``None`` to CUDA when available, else CPU; check an explicit request."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine; use 'cpu' or 'auto'")
    return dev


def parse_nvidia_smi_utilization(text: str) -> list[float]:
    """GPU utilisation percentages from ``nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits``."""
    out = []
    for line in text.strip().splitlines():
        line = line.strip().rstrip("%").strip()
        if line:
            try:
                out.append(float(line))
            except ValueError:
                continue
    return out


class GpuMonitor:
    """Samples GPU utilisation every ``interval`` seconds in a background thread (via nvidia-smi).

    ``mean`` is the average over samples and GPUs; ``None`` when nothing could be sampled.
    """

    def __init__(self, interval: float = 1.0) -> None:
        import threading

        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import shutil
        import subprocess

        exe = shutil.which("nvidia-smi")
        if exe is None:
            return
        while not self._stop.is_set():
            try:
                res = subprocess.run([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5)
                self.samples.extend(parse_nvidia_smi_utilization(res.stdout))
            except (OSError, subprocess.SubprocessError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


class gpu_monitor:  # noqa: N801 - used as a context manager
    """Log the mean GPU utilisation of a step when it runs on CUDA (no-op on CPU)."""

    def __init__(self, device: str | torch.device, what: str) -> None:
        self.on = str(device).startswith("cuda")
        self.what = what
        self.mon = GpuMonitor() if self.on else None

    def __enter__(self) -> gpu_monitor:
        if self.mon is not None:
            self.mon.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mon is None:
            return
        self.mon.__exit__(*exc)
        import logging

        m = self.mon.mean
        logging.getLogger("reconaudit.gpu").info(
            "GPU utilisation during %s: %s", self.what, "n/a" if m is None else f"{m:.0f}% (mean of {len(self.mon.samples)} samples)"
        )
