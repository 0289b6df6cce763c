"""Secret masking for everything shown or stored: whole texts, and streams that arrive in chunks.

A value shorter than four characters is never masked: it would blank out innocent text and carries
little secrecy anyway. A stream (``--verbose`` output) is masked across chunk boundaries: the end of
a chunk that could be the start of a secret is held back until the next chunk (or the end) shows
whether it is one, so a secret split across two chunks is never printed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deployer.remote.shell import MASK

MIN_SECRET_LENGTH = 4


@dataclass
class Masker:
    """Replaces every known secret value in text that is about to be shown or stored."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text

    def held_prefix(self, text: str) -> int:
        """How many characters at the end of ``text`` could begin a secret (and must wait for more)."""
        longest = 0
        for value in self.values:
            for size in range(min(len(value) - 1, len(text)), longest, -1):
                if text.endswith(value[:size]):
                    longest = size
                    break
        return longest

    def stream(self, emit: Callable[[str], None]) -> MaskedStream:
        """A writer that masks chunked text before passing it to ``emit``; call ``close()`` at the end."""
        return MaskedStream(self, emit)


class MaskedStream:
    """Masks a stream of chunks: what could still turn into a secret is held back until it cannot."""

    def __init__(self, masker: Masker, emit: Callable[[str], None]) -> None:
        self.masker = masker
        self.emit = emit
        self._held = ""

    def write(self, chunk: str) -> None:
        text = self._held + chunk
        # A secret that ends inside the held-back tail is masked once the tail is complete; mask first,
        # then hold back only what may begin the next secret.
        masked = self.masker(text)
        keep = self.masker.held_prefix(masked)
        self._held = masked[len(masked) - keep :] if keep else ""
        out = masked[: len(masked) - keep]
        if out:
            self.emit(out)

    def close(self) -> None:
        """Emit what was held back: the stream ended, so it is not the start of a secret."""
        held, self._held = self._held, ""
        if held:
            self.emit(self.masker(held))
