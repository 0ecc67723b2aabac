"""A progress line that suits where it goes: redrawn in place on a terminal, and in a log (a
pipe, a file, CI) one plain line every `interval` seconds instead of a stream of carriage returns."""

from __future__ import annotations

import time
from typing import TextIO

BAR = 24  # characters of the bar on a terminal
REDRAW = 0.1  # seconds between redraws on a terminal


class Progress:
    """Counts items done out of `total` and shows items, rate and time left."""

    def __init__(self, total: int, stream: TextIO, interval: float = 10.0):
        self.total, self.done = total, 0
        self._stream = stream
        self._terminal = stream.isatty()
        self._interval = REDRAW if self._terminal else interval
        self._started = self._shown = time.monotonic()

    def advance(self, count: int) -> None:
        """Count `count` more items done (indexed or failed); shown when a redraw or log line is due."""
        self.done += count
        now = time.monotonic()
        if now - self._shown >= self._interval or self.done >= self.total:
            self._shown = now
            self._show(self.line())

    def say(self, message: str) -> None:
        """A message on its own line (a failed file), the progress line drawn again below it."""
        if self._terminal:
            self._stream.write('\r\033[K')
        self._stream.write(message + '\n')
        if self._terminal:
            self._show(self.line())
        self._stream.flush()

    def close(self) -> None:
        """End the redrawn line, so that what follows starts on its own."""
        if self._terminal:
            self._stream.write('\n')
            self._stream.flush()

    def rate(self) -> float:
        """Items per second since the start."""
        return self.done / max(time.monotonic() - self._started, 1e-9)

    def line(self) -> str:
        """Items done of the total, the rate and the time left: with a bar on a terminal."""
        rate = self.rate()
        left = _duration((self.total - self.done) / rate) if rate > 0 else '?'
        share = self.done / self.total if self.total else 1.0
        counts = f'{self.done}/{self.total} ({share:.0%}), {rate:.1f} items/s, {left} left'
        if not self._terminal:
            return f'indexing: {counts}'
        filled = round(share * BAR)
        return f'[{"#" * filled}{"." * (BAR - filled)}] {counts}'

    def _show(self, line: str) -> None:
        self._stream.write(f'\r\033[K{line}' if self._terminal else line + '\n')
        self._stream.flush()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}:{minutes:02d}:{seconds:02d}'
