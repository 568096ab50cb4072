"""Per-prefix windowed sums for E2 (work routed per prefix, TTFT per prefix), O(1) per update,
over two buckets of the window: the current and the previous one."""

from __future__ import annotations

from collections import OrderedDict


class KeyWindows:
    """Prefix key -> Buckets, least recently updated first, so keys idle for two windows
    are pruned in O(1) amortized (a long-running router sees unboundedly many prefixes)."""

    __slots__ = ("_d", "_pruned_at")

    def __init__(self) -> None:
        self._d: OrderedDict[int, Buckets] = OrderedDict()
        self._pruned_at: int | None = None  # the bucket of the last prune

    def add(self, key: int, b: int, value: float) -> "Buckets":
        d = self._d
        w = d.get(key)
        if w is None:
            w = d[key] = Buckets()
        else:
            d.move_to_end(key)
        w.add(b, value)
        if b != self._pruned_at:
            # Within one bucket a prune finds nothing new: what it left is in bucket b - 1 or
            # later, and every key added since is in bucket b.
            self._pruned_at = b
            while d:
                oldest = next(iter(d.values()))
                if oldest.bucket >= b - 1:
                    break
                d.popitem(last=False)
        return w

    def items(self):
        return self._d.items()

    def __len__(self) -> int:
        return len(self._d)


class Buckets:
    """Two-bucket windowed (sum, count), O(1) per update: per-prefix load and TTFT."""

    __slots__ = ("bucket", "cur", "prev", "n_cur", "n_prev")

    def __init__(self) -> None:
        self.bucket, self.cur, self.prev, self.n_cur, self.n_prev = -1, 0.0, 0.0, 0, 0

    def add(self, b: int, value: float) -> None:
        if b != self.bucket:
            if b == self.bucket + 1:
                self.prev, self.n_prev = self.cur, self.n_cur
            else:
                self.prev, self.n_prev = 0.0, 0
            self.cur, self.n_cur, self.bucket = 0.0, 0, b
        self.cur += value
        self.n_cur += 1

    def total(self, b: int) -> float:
        if b == self.bucket:
            return self.cur + self.prev
        return self.cur if b == self.bucket + 1 else 0.0
