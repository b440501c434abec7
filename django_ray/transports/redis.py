"""kombu's Redis transport, with one client per channel for its short commands.

kombu builds a new ``redis.Redis`` client for every acknowledgement, every delivery it
records as unacknowledged and every publish (``Channel.conn_or_acquire``). A client is a
thin wrapper over the channel's connection pool, but building one copies redis-py's table
of ~170 response callbacks: about 0.2 ms, three times per task. This channel builds that
client once per pool and reuses it (a ``redis.Redis`` over a pool is safe to share; each
command takes a connection from the pool). Everything else is kombu's.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport"]


class Channel(kombu_redis.Channel):
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
