"""kombu's Redis transport, with one client per channel and acknowledgements in batches.

kombu builds a new ``redis.Redis`` client for every acknowledgement, every delivery it
records as unacknowledged and every publish (``Channel.conn_or_acquire``). A client is a
thin wrapper over the channel's connection pool, but building one copies redis-py's table
of ~170 response callbacks: about 0.2 ms, three times per task. This channel builds that
client once per pool and reuses it (a ``redis.Redis`` over a pool is safe to share; each
command takes a connection from the pool).

An acknowledgement is one Redis round trip (a MULTI/EXEC removing the delivery from the
unacked hash and index). Inside ``QoS.batched()`` acknowledgements are counted at once and
sent together when the block ends, as one round trip for all of them; the worker uses it
for the tasks whose outcomes it stores together. Everything else is kombu's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

__all__ = ["Channel", "QoS", "Transport"]


class QoS(kombu_redis.QoS):
    _batch: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Tags acknowledged in a batch that never reached Redis (the connection broke):
        # the broker sends them again once it has reconnected.
        self.unsent: list[str] = []

    def ack(self, delivery_tag: str) -> None:
        if self._batch is None:
            super().ack(delivery_tag)
            return
        self._batch.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # kombu's own bookkeeping (the prefetch count)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Send the acknowledgements made inside the block as one round trip at its end.

        If that round trip fails, the tags are kept in ``unsent``; until they are sent, the
        deliveries stay in the unacked index and come back after their lease.
        """
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

    def remove(self, tags: list[str]) -> None:
        """Drop acknowledged deliveries from the unacked hash and index: one round trip."""
        with self.pipe_or_acquire() as pipe:
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.hdel(self.unacked_key, *tags)
            pipe.execute()


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the BRPOP client: kombu keeps one already
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
