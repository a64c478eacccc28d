"""redis-py's transactions against kvstore's RESP door (tests/resp.rs runs
this): the default pipeline (MULTI/EXEC), the transaction() helper with
its WATCH retries from 8 clients at once, WatchError when a watched key
changes, and Lock (its Lua scripts run as native transactions): acquire,
extend, reacquire, release, a stolen lock, and mutual exclusion between
threads; and a PubSub listening for keyspace notifications. Usage:
redis_transactions.py HOST:PORT"""

import sys
import threading

import redis

host, port = sys.argv[1].rsplit(":", 1)


def client():
    return redis.Redis(host=host, port=int(port))


r = client()
r.flushdb()

# The default pipeline wraps its commands in MULTI/EXEC.
pipe = r.pipeline()
pipe.set("a", 1).incr("a").get("a").delete("missing")
assert pipe.execute() == [True, 2, b"2", 0], "pipeline"

# A runtime error is raised after the others ran (raise_on_error=False
# returns it in its place).
r.set("text", "x")
pipe = r.pipeline()
pipe.incr("text").set("b", "1")
replies = pipe.execute(raise_on_error=False)
assert isinstance(replies[0], redis.ResponseError) and replies[1] is True, replies
assert r.get("b") == b"1"


def increment(pipe):
    current = pipe.get("counter")
    pipe.multi()
    pipe.set("counter", int(current or 0) + 1)


# transaction() retries on WatchError: 8 clients, 25 increments each.
def worker():
    c = client()
    for _ in range(25):
        c.transaction(increment, "counter")


threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert r.get("counter") == b"200", r.get("counter")

# A watched key written by another client makes EXEC fail.
other = client()
with r.pipeline() as pipe:
    pipe.watch("w")
    other.set("w", "theirs")
    pipe.multi()
    pipe.set("w", "mine")
    try:
        pipe.execute()
        raise AssertionError("EXEC ran over a changed watched key")
    except redis.WatchError:
        pass
assert r.get("w") == b"theirs"

# Lock: SET NX PX to acquire; release, extend and reacquire are Lua
# scripts kvstore recognises by their SHA1 and runs as transactions.
lock = r.lock("res", timeout=10)
assert lock.acquire(blocking=False)
assert not r.lock("res", timeout=10).acquire(blocking=False), "held twice"
assert lock.locked() and lock.owned()
lock.extend(5)
assert 14_000 < r.pttl("res") <= 15_000, r.pttl("res")
lock.extend(3, replace_ttl=True)
assert 2_000 < r.pttl("res") <= 3_000, r.pttl("res")
lock.reacquire()
assert 9_000 < r.pttl("res") <= 10_000, r.pttl("res")
lock.release()
assert not lock.locked()

stolen = r.lock("res2", timeout=10)
assert stolen.acquire(blocking=False)
r.set("res2", "someone else")
try:
    stolen.release()
    raise AssertionError("released a lock another holder had")
except redis.exceptions.LockNotOwnedError:
    pass
assert r.get("res2") == b"someone else"


# Mutual exclusion: 8 threads, 5 read-modify-writes each under the lock.
def locked_worker():
    c = client()
    for _ in range(5):
        with c.lock("mutex", timeout=5, sleep=0.005, blocking_timeout=30):
            n = int(c.get("guarded") or 0)
            c.set("guarded", n + 1)


threads = [threading.Thread(target=locked_worker) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert r.get("guarded") == b"40", r.get("guarded")

# Keyspace notifications: a redis-py PubSub listening for key changes.
r.config_set("notify-keyspace-events", "KEA")
assert r.config_get("notify-keyspace-events") == {"notify-keyspace-events": "AKE"}
listener = r.pubsub()
listener.psubscribe("__keyspace@0__:conf/*")
assert listener.get_message(timeout=5)["type"] == "psubscribe"
r.set("conf/mode", "fast")
r.delete("conf/mode")
seen = []
for _ in range(100):
    message = listener.get_message(timeout=5)
    if message is not None:
        seen.append((message["channel"], message["data"]))
    if len(seen) == 2:
        break
assert seen == [(b"__keyspace@0__:conf/mode", b"set"), (b"__keyspace@0__:conf/mode", b"del")], seen
listener.close()
r.config_set("notify-keyspace-events", "")

print("all python checks passed")
