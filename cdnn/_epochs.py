"""Epoch plans: which rows each step trains on, and in what order, for one process and for the
ranks of a data-parallel fit (cdnn.distributed). A plan answers, once per epoch, this process's
row indices for the epoch's steps (local_batch rows each, the last step maybe fewer) and, for
several ranks, each step's loss factors for the gradient exchange (src/exchange.pxd).

- Replicated: every process holds all rows and draws the same permutation; one process is the
  case of one rank.
- Sharded: each rank holds its own rows (fit(..., sharded=True)).
"""
from __future__ import annotations

import numpy as np


def epoch_plan(group, train, batch_size: int, rng, shuffle: bool, sharded: bool,
               counts=None):
    """The plan for a fit's rows on this process of group (counts: every rank's rows, sharded)."""
    if sharded:
        return Sharded(train, batch_size, group.rank, counts, rng, shuffle)
    return Replicated(train, batch_size, shuffle, group.rank, group.size)


def part_edges(rows: int, size: int) -> np.ndarray:
    """Where each rank's part of a batch of `rows` rows starts (and the last ends): rank r
    takes rows // size rows, the first rows % size ranks one more."""
    r = np.arange(size + 1)
    return (rows // size) * r + np.minimum(r, rows % size)


def step_factors(table: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """From each step's part weights on every rank (steps × ranks: Σw, or the row count), this
    rank's loss factor f = w_rank / Σ w and whether f is the same on every rank
    (src/exchange.pxd). A step of zero weight in all gives every rank f = 1 / ranks, so the L2
    term still counts once, as in one process."""
    total = table.sum(axis=1)
    zero = total == 0
    f = np.where(zero, 1 / table.shape[1], table[:, rank] / np.where(zero, 1, total))
    uniform = zero | (table == table[:, :1]).all(axis=1)
    return f, uniform


class Replicated:
    """Every rank holds all n rows and draws the same permutation; rank r trains on its part
    of each global batch (part_edges). A part with no rows (a last batch smaller than the
    ranks) runs one padding row with factor 0: it counts for nothing. One process is the
    case of one rank."""

    def __init__(self, train, batch_size: int, shuffle: bool = True, rank: int = 0,
                 size: int = 1):
        self.train, self.rank, self.size, self.shuffled = train, rank, size, shuffle
        self.n = len(train.X)
        self.batch = min(batch_size, self.n)
        self.steps = -(-self.n // self.batch)
        self.full = self.n // self.batch
        self.last = self.n - self.full * self.batch
        edges = part_edges(self.batch, size)
        self.local_batch = max(1, edges[rank + 1] - edges[rank])
        self.order = np.arange(self.n)
        self.rows = np.full(self.steps, self.batch)
        self.rows[-1] = self.n - self.batch * (self.steps - 1)
        self.total_weight = self.n if train.weights is None else float(train.weights.sum())

    def epoch(self, rng, gather=None) -> tuple[np.ndarray, tuple | None]:
        """This rank's rows for the epoch's steps in the order they run (local_batch per step,
        the last step maybe fewer; a new permutation from rng when shuffled), and the steps'
        loss factors (step_factors; None for one process)."""
        if self.shuffled:
            rng.shuffle(self.order)
        if self.size == 1:
            return self.order, None
        B, full = self.batch, self.full
        pieces, tables = [], []
        if full:
            edges = part_edges(B, self.size)
            lo, hi = edges[self.rank], edges[self.rank + 1]
            batches = self.order[:full * B].reshape(full, B)
            pieces.append((batches[:, lo:hi] if hi > lo else batches[:, :1]).ravel())
            tables.append(self._weights(batches, edges))
        if self.last:
            edges = part_edges(self.last, self.size)
            lo, hi = edges[self.rank], edges[self.rank + 1]
            tail = self.order[full * B:]
            pieces.append(tail[lo:hi] if hi > lo else tail[:1])
            tables.append(self._weights(tail[None, :], edges))
        return np.concatenate(pieces), step_factors(np.concatenate(tables), self.rank)

    def _weights(self, batches: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """Each batch's parts' weights (batches × ranks)"""
        if self.train.weights is None:
            return np.tile(np.diff(edges).astype(np.float64), (len(batches), 1))
        sums = np.cumsum(self.train.weights[batches], axis=1, dtype=np.float64)
        sums = np.concatenate([np.zeros((len(batches), 1)), sums], axis=1)
        return np.diff(sums[:, edges], axis=1)


class Sharded:
    """Each rank holds its own rows (shard sizes: counts). An epoch is ceil(Σ counts / B)
    steps of B rows; rank r gives part_edges(B)'s share to every step, from its own endless
    stream of passes over its shard (shuffled by its own generator)."""

    def __init__(self, train, batch_size: int, rank: int, counts: list[int], rng,
                 shuffle: bool):
        size = len(counts)
        if batch_size < size:
            raise ValueError(f"batch_size={batch_size} is the global batch: it needs at "
                             f"least one row for each of the {size} ranks")
        self.train, self.rank, self.size = train, rank, size
        self.batch = batch_size
        self.n = sum(counts)
        self.steps = -(-self.n // batch_size)
        self.edges = part_edges(batch_size, size)
        self.local_batch = int(self.edges[rank + 1] - self.edges[rank])
        self.rows = np.full(self.steps, batch_size)
        self.rng = np.random.default_rng([int(rng.integers(2**63)), rank])
        self.shuffled = shuffle
        self.stream = np.empty(0, dtype=np.intp)
        self.total_weight = None        # the epoch's, from its table

    def epoch(self, rng, gather) -> tuple[np.ndarray, tuple]:
        """As Replicated.epoch, from this rank's own stream (shuffled pass by pass by its own
        generator, not rng); gather: every rank's step weights side by side (the group's)."""
        need = self.steps * self.local_batch
        own = len(self.train.X)
        while len(self.stream) < need:
            one_pass = self.rng.permutation(own) if self.shuffled else np.arange(own)
            self.stream = np.concatenate([self.stream, one_pass])
        order, self.stream = self.stream[:need], self.stream[need:]
        if self.train.weights is None:
            table = np.tile(np.diff(self.edges).astype(np.float64), (self.steps, 1))
        else:
            mine = self.train.weights[order].reshape(self.steps, self.local_batch)
            table = gather(mine.sum(axis=1, dtype=np.float64))
        self.total_weight = float(table.sum())
        return order, step_factors(table, self.rank)
