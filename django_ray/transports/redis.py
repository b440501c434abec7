"""kombu's Redis transport, with one client per channel and acknowledgements in batches.

kombu builds a new ``redis.Redis`` client for every acknowledgement, every delivery it
records as unacknowledged and every publish (``Channel.conn_or_acquire``). A client is a
thin wrapper over the channel's connection pool, but building one copies redis-py's table
of ~170 response callbacks: about 0.2 ms, three times per task. This channel builds that
client once per pool and reuses it (a ``redis.Redis`` over a pool is safe to share; each
command takes a connection from the pool).

An acknowledgement is one Redis round trip (a MULTI/EXEC removing the delivery from the
unacked hash and index); inside ``QoS.batched()`` (``transports.acks``) they go together,
one round trip for all of them. Everything else is kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

from django_ray.transports.acks import BatchedAcks

__all__ = ["Channel", "QoS", "Transport"]


class QoS(BatchedAcks, kombu_redis.QoS):
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
