"""Acknowledgements in batches, for kombu virtual transports that can send many at once.

Inside ``batched()`` an acknowledgement is counted at once (kombu's bookkeeping: the
prefetch window frees) and sent with the others when the block ends, as one statement or
round trip for all of them (``remove``). The worker uses it for the messages whose outcomes
it stored together. If that send fails, the tags are kept in ``unsent``; until they are
sent (the broker does so once it has reconnected), the deliveries stay leased and come
back after their lease, to be found finished and dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import virtual

__all__ = ["BatchedAcks"]


class BatchedAcks(virtual.QoS):
    _batch: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unsent: list[str] = []

    def remove(self, tags: list[str]) -> None:
        """Drop the acknowledged deliveries ``tags`` from the broker, all at once."""
        raise NotImplementedError

    def ack(self, delivery_tag: str) -> None:
        if self._batch is None:
            self.remove([delivery_tag])
        else:
            self._batch.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # kombu's own bookkeeping (the prefetch count)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Send the acknowledgements made inside the block together, at its end."""
        if self._batch is not None:  # already batching: the outer block sends them
            yield
            return
        self._batch = []
        try:
            yield
        finally:
            tags, self._batch = self._batch, None
            if tags:
                try:
                    self.remove(tags)
                except BaseException:
                    self.unsent.extend(tags)
                    raise
