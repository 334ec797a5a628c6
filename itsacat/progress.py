"""A small progress bar on stderr: epoch, cost and ETA; plain lines when stderr is no terminal."""

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str = "epoch", stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._last_line = ""
        self._last_done = -1

    def update(self, done: int, **fields: object) -> None:
        """Show `done` of `total`; redraw at most 10 times a second (or every 10% off a tty)."""
        now = time.monotonic()
        final = done >= self.total
        if self.tty and not final and now - self._last < 0.1:
            return
        elapsed = now - self.start
        eta = elapsed / done * (self.total - done) if done else float("nan")
        extra = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        width = 24
        filled = int(width * done / self.total)
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"[{bar}] {self.label} {done}/{self.total}  {extra}  "
            f"elapsed {_duration(elapsed)}  eta {_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
        else:
            step = max(self.total // 10, 1)
            # a line each time another tenth is crossed (polls rarely land on it exactly)
            crossed = done // step > max(self._last_done, 0) // step or self._last_done < 0
            if done == self._last_done or not (final or crossed):
                return
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last = now
        self._last_line = line
        self._last_done = done

    def close(self) -> None:
        if self.tty and self._last_line:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(v: object) -> str:
    return f"{v:.6f}" if isinstance(v, float) else str(v)


def _duration(s: float) -> str:
    if s != s:  # NaN: not known yet
        return "--:--"
    s = int(s)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
        if s >= 3600
        else f"{s // 60:02d}:{s % 60:02d}"
    )
