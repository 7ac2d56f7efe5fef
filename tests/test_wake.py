"""An idle worker fetches as soon as a message is enqueued (jobsys.dramatiq.broker).

Dramatiq's consumer sleeps between polls of an empty queue, up to the
worker's timeout; each hop of a small job waited for it. Every enqueue now
pushes a wake token and an idle consumer waits on it. Shown against real
Redis with a consumer whose timeout is far longer than the test's bound.
"""

from __future__ import annotations

import threading
import time
import uuid

import dramatiq
from dramatiq import Message

from jobsys.dramatiq.broker import MAX_DOUBLINGS, WAKE_TTL_MS, make_broker, wake_key
from jobsys.settings import get_settings

# The consumer's idle timeout: a wait that ends long before it was woken.
IDLE_TIMEOUT_MS = 60_000
# Liveness bound (not a speed target): far below IDLE_TIMEOUT_MS.
WOKEN_WITHIN_S = 15.0


def test_an_enqueue_wakes_an_idle_consumer_and_leaves_a_short_lived_token() -> None:
    settings = get_settings().model_copy(update={"namespace": f"w{uuid.uuid4().hex[:8]}"})
    broker = make_broker(settings)
    queue = "wakes"
    broker.declare_queue(queue)
    key = wake_key(broker.namespace, queue)
    consumer = broker.consume(queue, prefetch=1, timeout=IDLE_TIMEOUT_MS)
    # As after a long idle: each wait is the whole timeout, so only a wake (not
    # the next poll) delivers within WOKEN_WITHIN_S.
    consumer._misses = MAX_DOUBLINGS  # type: ignore[attr-defined]
    got: list[dramatiq.MessageProxy] = []
    waited: list[float] = []

    def consume() -> None:
        deadline = time.monotonic() + IDLE_TIMEOUT_MS / 1000
        while not got and time.monotonic() < deadline:
            t0 = time.monotonic()
            message = next(consumer)
            waited.append(time.monotonic() - t0)
            if message is not None:
                got.append(message)

    try:
        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(1.0)  # the consumer is idle, waiting
        sent = Message(queue_name=queue, actor_name="nobody", args=(), kwargs={}, options={})
        broker.enqueue(sent)
        thread.join(WOKEN_WITHIN_S)
        assert got, f"not woken within {WOKEN_WITHIN_S} s (idle waits: {waited})"
        assert got[0].message_id == sent.message_id
        consumer.ack(got[0])
        # Woken, the consumer spends the token. Had a stalled host let its poll
        # fetch the message between the enqueue and the push (CI saw it once),
        # one token is left, and lives WAKE_TTL_MS at most: tokens never pile up.
        if broker.client.exists(key):
            assert broker.client.llen(key) == 1
            assert 0 < broker.client.pttl(key) <= WAKE_TTL_MS
        broker.enqueue(Message(queue_name=queue, actor_name="nobody", args=(), kwargs={},
                               options={}))  # fmt: skip
        assert 0 < broker.client.pttl(key) <= WAKE_TTL_MS
    finally:
        consumer.close()
        broker.client.delete(key, f"{broker.namespace}:{queue}",
                             f"{broker.namespace}:{queue}.msgs",
                             f"{broker.namespace}:__heartbeats__")  # fmt: skip
        broker.client.close()
