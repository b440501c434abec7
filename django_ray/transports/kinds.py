"""What differs between brokers, stated once per kind (``django://``, Redis, RabbitMQ, others).

A ``BrokerKind`` is its name (``"redis"``: it is a ``str``, so it prints, compares and
serialises as the name) plus the traits the rest of the code asks about instead of
comparing names:

========================  ==========  ===========  ==========  ========
trait                     django      redis        amqp        other
========================  ==========  ===========  ==========  ========
in_database               yes         no           no          no
holds_eta                 yes         no           no          no
priority served first     highest     0 (lowest)   9 (highest) highest
priority on the wire      Django's    0-9          0-9         0-9
confirms_publish          no          no           yes         no
priority_queues           no          no           yes         no
lease                     the row     unacked key  connection  kombu's
carries_control           no          yes          yes         no
server_queues             no          no           yes         no
========================  ==========  ===========  ==========  ========

* ``in_database``: messages are rows of the project's database, so a message is published
  inside the enqueueing transaction and counted with the ORM.
* ``holds_eta``: the broker itself holds a message until its eta (a row's visibility
  time); elsewhere the worker parks it in the durable schedule (``schedule.py``).
* ``lowest_first``: kombu's Redis transport serves priority 0 first, RabbitMQ 9 first.
* ``django_priority``: the ``django://`` transport keeps Django's -100..100 priority.
* ``confirms_publish``: RabbitMQ confirms each publish (so a retry or the next step of a
  chain is on the broker before the message that caused it is acknowledged).
* ``priority_queues``: queues are declared with ``x-max-priority`` when configured.
* ``lease``: how a delivered message's lease is renewed (``transports.leases``): ``"row"``
  (the row's visibility time), ``"unacked"`` (our own unacked index on Redis),
  ``"connection"`` (RabbitMQ requeues on a dropped connection: nothing to renew), None.
* ``carries_control``: the broker carries Celery's pidbox fanout (remote control, events).
* ``server_queues``: queues live on the server with fixed arguments: an existing one is
  declared passively (a Celery client may own it) and counted by a passive declare.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AMQP", "DJANGO", "KINDS", "REDIS", "BrokerKind", "kind_of"]


class BrokerKind(str):
    """A broker family: its name, and its traits (see the module docstring)."""

    in_database: bool = False
    holds_eta: bool = False
    lowest_first: bool = False
    django_priority: bool = False
    confirms_publish: bool = False
    priority_queues: bool = False
    lease: str | None = None
    carries_control: bool = False
    server_queues: bool = False

    def __new__(cls, name: str, **traits: Any) -> BrokerKind:
        kind = super().__new__(cls, name)
        for trait, value in traits.items():
            if not hasattr(cls, trait):
                raise TypeError(f"Unknown broker trait {trait!r}.")
            setattr(kind, trait, value)
        return kind

    def to_broker_priority(self, priority: int) -> int:
        """Map Django's -100..100 (higher first) onto this broker's priority property."""
        step = round((priority + 100) * 9 / 200)
        return 9 - step if self.lowest_first else step

    def from_broker_priority(self, value: Any) -> int:
        """Map this broker's priority property (as a Celery client sets it) onto Django's."""
        if not isinstance(value, int) or isinstance(value, bool):
            return 0
        if self.django_priority:
            return value
        value = max(0, min(9, value))
        step = 9 - value if self.lowest_first else value
        return round(step * 200 / 9) - 100

    def from_celery_priority(self, value: int) -> int:
        """Map a Celery priority (0-9) given to a producer onto Django's scale, ordered as
        this broker orders it (what ``from_broker_priority`` gives for a real client)."""
        step = 9 - value if self.lowest_first else value
        return round(step * 200 / 9) - 100


DJANGO = BrokerKind("django", in_database=True, holds_eta=True, django_priority=True, lease="row")
REDIS = BrokerKind("redis", lowest_first=True, lease="unacked", carries_control=True)
AMQP = BrokerKind(
    "amqp",
    confirms_publish=True,
    priority_queues=True,
    lease="connection",
    carries_control=True,
    server_queues=True,
)
KINDS: dict[str, BrokerKind] = {str(kind): kind for kind in (DJANGO, REDIS, AMQP)}
_ALIASES: dict[str, BrokerKind] = {
    "rediss": REDIS,
    "pyamqp": AMQP,
    "amqps": AMQP,
    "librabbitmq": AMQP,
}


def kind_of(url: str) -> BrokerKind:
    """Return the kind of the broker at ``url`` (another scheme: a kind with no traits)."""
    scheme = url.split("://", 1)[0].split("+")[0].lower()
    return _ALIASES.get(scheme) or KINDS.get(scheme) or BrokerKind(scheme)
