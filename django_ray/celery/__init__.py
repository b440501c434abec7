"""The Celery server side: everything a Celery client sees of a task django-ray ran.

* ``states``: Celery's task states, in one place (``compat.celery.states`` re-exports them).
* ``wire``: Celery's request, result and exception formats, and the one table of Celery's
  names for our exceptions.
* ``failures``: the one rebuild of an exception from what a record or a store holds.
* ``stores``: the result stores (a Celery app's backend, Redis, and ``RecordStore`` on the
  ``TaskRecord`` table, so there is always one).
* ``results``: the store in use, the mirror of a settled task and revoke, beside the records.
* ``chords``: the one chord join.
* ``control``: Celery's remote control (inspect, revoke) and task events.
* ``canvas`` and ``send``: signatures and workflows on the wire, routing, follow-ups.

Nothing here imports Celery or ``compat``; ``compat.celery`` builds on this package.
"""
