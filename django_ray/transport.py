"""The transport layer: the only module that talks to kombu.

``publish()`` puts a ``TaskMessage`` on the broker (on commit for an external broker, in
the same transaction for ``django://``). ``Broker`` is a worker's connection: it consumes
queues with push delivery where the broker has it (BRPOP on Redis, basic.consume on
RabbitMQ) and hands raw kombu messages to the worker, which decodes them with
``message.decode``, never with kombu's serializers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

from django.db import transaction
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu import Message as KombuMessage

from django_ray import conf
from django_ray.message import CONTENT_TYPE, TaskMessage, decode
from django_ray.transports import register_transports
from django_ray.transports.acks import BatchedAcks
from django_ray.transports.kinds import BrokerKind, kind_of
from django_ray.transports.leases import (
    REDIS_UNACKED_KEYS,
    RESTORE_LOCK_SECONDS,
    LeaseKeeper,
    lease_seconds,
)

logger = logging.getLogger(__name__)

__all__ = ["Broker", "broker_kind", "decode_kombu", "publish", "publish_now"]

_local = threading.local()
RETRY_POLICY = {"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


def broker_kind(url: str) -> BrokerKind:
    """Return the kind of the broker at ``url`` (``transports.kinds``)."""
    return kind_of(url)


def to_broker_priority(kind: str, priority: int) -> int:
    """Map Django's -100..100 (higher first) onto the priority property of broker ``kind``."""
    return kind_of(kind).to_broker_priority(priority)


def from_broker_priority(kind: str, value: Any) -> int:
    """Map broker ``kind``'s priority property (as a Celery client sets it) onto Django's."""
    return kind_of(kind).from_broker_priority(value)


class Broker:
    """A kombu connection to the configured broker, for publishing and consuming."""

    def __init__(self, url: str | None = None, *, transport_options: dict[str, Any] | None = None):
        register_transports()
        self.url = url or conf.broker_url()
        self.kind = kind_of(self.url)
        options = dict(conf.get("BROKER_TRANSPORT_OPTIONS") or {})
        if self.kind.confirms_publish:
            # A retry or the next step of a chain is on the broker before the message that
            # caused it is acknowledged.
            options.setdefault("confirm_publish", True)
        if self.kind.lease == "unacked":
            # A short lease the worker renews (django_ray.transports.leases), kept in an
            # unacked index of our own.
            options.setdefault("visibility_timeout", lease_seconds())
            for key, value in REDIS_UNACKED_KEYS.items():
                options.setdefault(key, value)
            options.setdefault("unacked_mutex_expire", RESTORE_LOCK_SECONDS)
        options.update(transport_options or {})
        self.connection = self._connect(options)
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._declared: set[str] = set()
        self._unsent_acks: list[str] = []

    def _connect(self, options: dict[str, Any]) -> Connection:
        transport = None
        if urlsplit(self.url).scheme in ("redis", "rediss"):
            # kombu's transport with one client per channel and batched acknowledgements;
            # imported here: redis-py takes 0.1 s to import, a Ray job's whole budget.
            from django_ray.transports.redis import Transport as RedisTransport

            transport = RedisTransport
        return Connection(self.url, transport=transport, transport_options=options)

    # -- queues -----------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        """Return the kombu Queue for ``name``, declared as Celery declares its queues."""
        arguments = None
        max_priority = conf.get("QUEUE_MAX_PRIORITY")
        if self.kind.priority_queues and max_priority:
            arguments = {"x-max-priority": int(max_priority)}
        return Queue(
            name,
            Exchange(name, type="direct"),
            routing_key=name,
            durable=True,
            queue_arguments=arguments,
        )

    def _declare(self, name: str) -> None:
        if name in self._declared:
            return
        queue = self.queue(name)(self.connection.default_channel)
        if self.kind.server_queues:
            try:  # an existing queue keeps its arguments (a Celery client may own it)
                queue.queue_declare(passive=True)
            except self.connection.channel_errors:
                self.connection.release()
                self.connection = self._connect(self.connection.transport_options or {})
                self._producer = None
                queue = self.queue(name)(self.connection.default_channel)
                queue.declare()
        else:
            queue.declare()
        self._declared.add(name)

    def queue_size(self, name: str) -> int:
        """Return how many messages wait in queue ``name`` for delivery (0: none or no queue).

        Redis: the lengths of the queue's lists, one per priority step; RabbitMQ: a passive
        declare's message count; django://: its ``QueueMessage`` rows.
        """
        if not self.kind.server_queues:  # kombu's virtual transports: Redis sums priorities
            return int(self.connection.default_channel._size(name))
        channel = self.connection.channel()
        try:
            return int(channel.queue_declare(queue=name, passive=True).message_count)
        except self.connection.channel_errors:  # no such queue: nothing waits in it
            return 0
        finally:
            try:
                channel.close()
            except Exception:  # already closed by the broker's 404
                logger.debug("Ignoring error while closing a channel.", exc_info=True)

    # -- publishing -------------------------------------------------------------

    def publish(self, message: TaskMessage) -> None:
        """Publish ``message`` to its queue through the anonymous exchange."""
        self.connection.ensure_connection(**RETRY_POLICY)
        self._declare(message.queue)
        if self._producer is None:
            self._producer = Producer(self.connection.default_channel)
        self._producer.publish(
            message.wire_body(),
            exchange="",
            routing_key=message.queue,
            headers=message.wire_headers(),
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            priority=self.kind.to_broker_priority(message.priority),
            correlation_id=message.correlation_id or message.id,
            reply_to=message.reply_to,
            delivery_mode=2,
            retry=True,
            retry_policy=RETRY_POLICY,
        )

    # -- consuming --------------------------------------------------------------

    def consume(
        self, queues: Iterable[str], on_message: Callable[[KombuMessage], None], *, prefetch: int
    ) -> None:
        """Start consuming ``queues``; ``on_message`` receives each raw kombu message."""
        names = list(queues)
        for name in names:
            self._declare(name)
        self._consumer = Consumer(
            self.connection.default_channel,
            queues=[self.queue(n) for n in names],
            on_message=on_message,
            auto_declare=False,
            prefetch_count=prefetch,
        )
        self._consumer.consume()

    def lease_keeper(self) -> LeaseKeeper:
        """Return a (not yet started) thread that renews the leases of held deliveries."""
        options = dict(self.connection.transport_options or {})
        lease = float(options.get("visibility_timeout") or lease_seconds())
        return LeaseKeeper(self.kind, self.url, lease=lease, options=options)

    def delivered_here(self, delivery: Any) -> bool:
        """Whether ``delivery`` (a kombu message) came through the current connection."""
        consumer = self._consumer
        return consumer is not None and getattr(delivery, "channel", None) is consumer.channel

    def drain(self, timeout: float) -> bool:
        """Deliver what arrives within ``timeout`` seconds; return False if nothing came."""
        try:
            self.connection.drain_events(timeout=timeout)
        except TimeoutError:
            return False
        return True

    @property
    def batches_acks(self) -> bool:
        """Whether acknowledgements made together reach the broker together (Redis and
        ``django://``: ``transports.acks``)."""
        qos = getattr(getattr(self.connection.transport, "Channel", None), "QoS", None)
        return isinstance(qos, type) and issubclass(qos, BatchedAcks)

    def acks_batched(self) -> contextlib.AbstractContextManager[None]:
        """A block whose acknowledgements reach the broker together, where it allows it.

        On Redis they are one round trip at the end of the block, on ``django://`` one
        DELETE (``transports.acks``); elsewhere each is sent as it is made.
        """
        qos = self._qos()
        if isinstance(qos, BatchedAcks):
            return qos.batched()
        return contextlib.nullcontext()

    def restore_expired(self) -> None:
        """Put back the deliveries whose lease ran out (their worker died), where consumers
        do that (Redis; elsewhere nothing to do: a ``django://`` row shows again by itself).

        kombu does it only when a poll finds the queue empty: a worker that always has
        work would never give a dead worker's messages back, however long its backlog.
        """
        qos = self._qos()
        if hasattr(qos, "restore_by_tag"):  # kombu's Redis QoS
            qos.restore_visible(num=qos.channel.unacked_restore_limit, interval=1)

    def _qos(self) -> Any:
        """The QoS of the channel this broker consumes on (None before ``consume()``)."""
        consumer = self._consumer
        return getattr(consumer.channel, "qos", None) if consumer is not None else None

    def set_prefetch(self, count: int) -> None:
        if self._consumer is not None:
            self._consumer.qos(prefetch_count=count)

    def cancel(self) -> None:
        """Stop taking new messages (unacknowledged ones stay with this connection)."""
        if self._consumer is not None:
            try:
                self._consumer.cancel()
            except self.connection.connection_errors + self.connection.channel_errors:
                pass

    def reconnect(self) -> None:
        """Drop the connection and consume again on a fresh one.

        Acknowledgements a batch could not send (``transports.acks``) are sent on the new
        connection: those messages' outcomes are stored, nothing must run them again.
        """
        consumer = self._consumer
        old_qos = self._qos()
        if isinstance(old_qos, BatchedAcks) and old_qos.unsent:
            self._unsent_acks += old_qos.unsent
            old_qos.unsent = []
        try:
            self.connection.release()
        except Exception:  # the old connection is already broken
            logger.debug("Ignoring error while releasing a broken connection.", exc_info=True)
        self.connection = self.connection.clone()
        self.connection.ensure_connection(**RETRY_POLICY)
        self._producer = None
        self._declared.clear()
        if consumer is not None:
            # kombu leaves these attributes untyped; ``consume()`` set them to these types.
            queues = cast("list[Queue]", consumer.queues)
            on_message = cast("Callable[[KombuMessage], None]", consumer.on_message)
            names = [q.name for q in queues]
            self.consume(names, on_message, prefetch=consumer.prefetch_count or 0)
        qos = self._qos()
        if self._unsent_acks and isinstance(qos, BatchedAcks):
            qos.remove(self._unsent_acks)
            self._unsent_acks = []

    @property
    def recoverable_errors(self) -> tuple[type[BaseException], ...]:
        return self.connection.recoverable_connection_errors + self.connection.connection_errors

    def close(self) -> None:
        self.connection.release()


def decode_kombu(message: KombuMessage, kind: str) -> TaskMessage:
    """Decode a raw kombu message into a ``TaskMessage`` (``MalformedMessage`` if it is not one)."""
    delivery_info = dict(message.delivery_info or {})
    props = dict(message.properties or {})
    return decode(
        headers=message.headers,
        body=message.body,
        content_type=message.content_type,
        properties=props,
        delivery_info=delivery_info,
        broker_priority=kind_of(kind).from_broker_priority(props.get("priority")),
        queue=delivery_info.get("routing_key"),
    )


def masked_url(url: str) -> str:
    """Return ``url`` with its password masked, for output a person or a log reads."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def _thread_broker(url: str | None = None) -> Broker:
    url = url or conf.broker_url()
    broker = getattr(_local, "broker", None)
    if broker is None or broker.url != url:
        broker = _local.broker = Broker(url)
    return broker


def publish_now(message: TaskMessage, *, url: str | None = None) -> None:
    """Publish at once on this thread's connection to ``url`` (default: the settings')."""
    broker = _thread_broker(url)
    try:
        broker.publish(message)
    except broker.recoverable_errors:
        logger.warning("Broker connection lost while publishing %s; reconnecting.", message.id)
        broker.reconnect()
        broker.publish(message)


def publish(message: TaskMessage, *, using: str | None = None) -> None:
    """Publish ``message``: inside the transaction for django://, else once it commits."""
    if kind_of(conf.broker_url()).in_database:
        publish_now(message)
    else:
        transaction.on_commit(partial(publish_now, message), using=using)
