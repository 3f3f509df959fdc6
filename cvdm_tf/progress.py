"""Progress lines for people: one status line redrawn in place on a terminal, a line at a time elsewhere (logs,
CI), with elapsed time and ETA. `Progress` follows training steps; `InferProgress` files and their tiles.

(keras.utils.Progbar draws one bar per epoch and knows nothing of files, tiles, resumed steps or messages that
must not be overwritten; these two small classes do what the commands need.)
"""

from __future__ import annotations

import math
import sys
import time


class Progress:
    """One status line: step, loss terms, ETA. Redrawn in place on a terminal, a line per log elsewhere."""

    SHOWN = ("loss", "diffusion", "consistency", "prior", "smoothness", "val_loss")

    def __init__(self, total: int = 0, start: int = 0, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.drawn = False  # a status line is open on the terminal
        self.begin(total, start)

    def begin(self, total: int, start: int = 0):
        """Start timing (ETA) from here: the first step after `start`, of `total`."""
        self.total, self.start = total, start
        self.began = time.monotonic()

    def message(self, text: str):
        """A line of its own (what is trained, a skipped image), not overwritten by the status line."""
        self._end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, step: int, values: dict):
        elapsed = time.monotonic() - self.began
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else 0.0
        width = 20
        filled = int(width * step / self.total)
        bar = "#" * filled + "." * (width - filled)
        terms = " ".join(f"{k} {values[k]:.4g}" for k in self.SHOWN if k in values)
        line = f"step {step}/{self.total} [{bar}] {terms} | {_clock(elapsed)} elapsed, ETA {_clock(eta)}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, message: str):
        """End the status line; then `message` on a line of its own (nothing if empty)."""
        if message:
            self.message(message)
        else:
            self._end_line()
            self.stream.flush()

    def _end_line(self):
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


class InferProgress:
    """One status line on stderr: file i/n, its tiles, elapsed time and ETA. Redrawn in place on a terminal; a
    line per file (and every few seconds during a large one) elsewhere. Errors get their own `error: ...` line."""

    def __init__(self, files: int, stream=None, interval_s: float = 10.0):
        self.files = files
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self.began = time.monotonic()
        self.last_line = -math.inf
        self.index, self.name = 0, ""
        self.tiles_done, self.tiles_total, self.batch_size = 0, 1, 1

    def start_file(self, index: int, name: str):
        self.index, self.name = index, name
        self.tiles_done, self.tiles_total = 0, 1
        self.tiles(0, 1, force=self.tty)

    def steps(self, done: int, total: int):
        """Called between chunks of sampling steps of the current batch of tiles: the bar moves within a tile."""
        batch = min(self.batch_size, self.tiles_total - self.tiles_done)
        self._draw(self.tiles_done + batch * done / max(total, 1), self.tiles_total, step=(done, total))

    def tiles(self, done: int, total: int, force: bool = False):
        """Called after each batch of tiles of the current file."""
        self.tiles_done, self.tiles_total = done, total
        self._draw(done, total, force=force)

    def _draw(self, done: float, total: int, force: bool = False, step=None):
        fraction = (self.index + done / max(total, 1)) / max(self.files, 1)
        elapsed = time.monotonic() - self.began
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else 0.0
        width = 20
        bar = "#" * int(width * fraction) + "." * (width - int(width * fraction))
        tiles = f" tile {min(int(done) + 1, total) if step else int(done)}/{total}" if total > 1 else ""
        steps = f" step {step[0]}/{step[1]}" if step else ""
        line = (f"file {self.index + 1}/{self.files} {self.name}{tiles}{steps} [{bar}] "
                f"| {_clock(elapsed)} elapsed, ETA {_clock(eta)}")
        finished = step is None and done >= total and total > 0
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + line)
        elif force or finished or now - self.last_line >= self.interval_s:
            self.stream.write(line + "\n")
            self.last_line = now
        else:
            return
        self.stream.flush()

    def message(self, text: str):
        """A line of its own (e.g. which planes of a z-stack were used)."""
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def error(self, message: str):
        self.stream.write(("\r\033[K" if self.tty else "") + f"error: {message}\n")
        self.stream.flush()

    def close(self, message: str):
        self.stream.write(("\r\033[K" if self.tty else "") + message + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
