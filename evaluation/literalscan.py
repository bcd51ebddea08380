"""Find every occurrence of many literal strings in one pass: the policy engine's only per-reply scan.

    scan = LiteralScanner(["全额赔付", "赔付", "24小时必发"])
    scan("我们全额赔付")      # [(1, 4, 6), (0, 2, 6)]: (key index, start, end) in characters

Every occurrence of every key is reported, overlapping and nested ones included (as a
``str.find`` loop over all keys would), in no particular order.

Backend: Hyperscan (the ``hyperscan`` package, Intel's SIMD literal matcher, on x86-64). Its cost
per reply grows far less with the number of keys than an Aho-Corasick automaton's: at 38,000 keys
(10,000 rules) an automaton follows failure links through megabytes of states on every byte, while
Hyperscan's literal matcher hashes a few bytes at a time into small tables and confirms only
candidates. Where ``hyperscan`` does not install (other CPUs), ``ahocorasick_rs`` is used: same
results, slower at large rule counts.

Hyperscan matches UTF-8 bytes and reports where a match ends; a literal starts ``len(key)`` bytes
earlier (UTF-8 keeps a key's match on character boundaries). Byte offsets are turned into
character offsets only for replies that matched, in one pass over the matches in order (linear
in the reply and the number of matches). Hyperscan's scratch space may not be shared by two scans
at once: each thread gets its own.
"""

from __future__ import annotations

import threading
from functools import lru_cache

__all__ = ["BACKENDS", "LiteralScanner", "default_backend"]

BACKENDS = ("hyperscan", "ahocorasick")


@lru_cache(maxsize=1)
def default_backend() -> str:
    """``hyperscan`` when it imports and runs on this CPU (it needs SSSE3), else ``ahocorasick``."""
    try:
        import hyperscan

        hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK).compile(expressions=[b"ab"], literal=True)
    except Exception:  # noqa: BLE001 - no wheel, or hyperscan.ArchitectureError: use the fallback
        return "ahocorasick"
    return "hyperscan"


def _collect(key: int, start: int, end: int, flags: int, out: list) -> None:
    out.append((end, key))


class LiteralScanner:
    """Every (key index, start, end) of ``keys`` in a text, overlapping matches included."""

    def __init__(self, keys, backend: str | None = None):
        self.keys: tuple[str, ...] = tuple(keys)
        if any(not key for key in self.keys):
            raise ValueError("a literal key is empty")
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown literal scan backend {self.backend!r}; one of {', '.join(BACKENDS)}")
        if not self.keys:
            self.find = lambda text: []
        elif self.backend == "hyperscan":
            self._setup_hyperscan()
        else:
            import ahocorasick_rs

            automaton = ahocorasick_rs.AhoCorasick(list(self.keys), matchkind=ahocorasick_rs.MatchKind.Standard)
            find = automaton.find_matches_as_indexes
            self.find = lambda text: find(text, overlapping=True)

    def __call__(self, text: str) -> list[tuple[int, int, int]]:
        return self.find(text)

    def _setup_hyperscan(self) -> None:
        import hyperscan

        encoded = [key.encode("utf-8") for key in self.keys]
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        db.compile(expressions=encoded, ids=list(range(len(encoded))), elements=len(encoded),
                   flags=[0] * len(encoded), literal=True)
        self._db = db
        self._byte_lens = tuple(map(len, encoded))
        self._char_lens = tuple(map(len, self.keys))
        local = threading.local()
        scan, scratch_for = db.scan, hyperscan.Scratch
        byte_lens, char_lens = self._byte_lens, self._char_lens

        def find(text: str) -> list[tuple[int, int, int]]:
            data = text.encode()
            try:
                scratch = local.scratch
            except AttributeError:
                scratch = local.scratch = scratch_for(db)
            out: list[tuple[int, int]] = []
            scan(data, _collect, 0, out, scratch)
            if not out:
                return out
            if len(data) == len(text):  # ASCII: bytes are characters
                return [(key, end - byte_lens[key], end) for end, key in out]
            # Character offsets: walk the matches by start byte, decoding only the gaps between them.
            starts = sorted((end - byte_lens[key], key) for end, key in out)
            found, byte_pos, char_pos = [], 0, 0
            for start, key in starts:
                if start > byte_pos:
                    char_pos += len(data[byte_pos:start].decode())
                    byte_pos = start
                found.append((key, char_pos, char_pos + char_lens[key]))
            return found

        self.find = find
