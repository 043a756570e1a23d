"""Allocation-heavy, threaded, deterministic Python workload.

Run with PYTHONMALLOC=malloc so every object goes through the C malloc (and,
under LD_PRELOAD, through arenalloc). Eight threads build dicts, lists and
strings, round-trip them through json, sort them, grow and shrink big
buffers, and hand objects to each other through a queue (so blocks are freed
by threads that did not allocate them). The printed result depends only on
the seeds: it must be identical with and without the preload.

Usage: alloc_heavy.py [scale]   (scale 1 is the default size)
"""

import hashlib
import json
import queue
import random
import sys
import threading

THREADS = 8
SCALE = int(sys.argv[1]) if len(sys.argv) > 1 else 1


def words(rng, n):
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def work(tid, handoff_out, handoff_in, results):
    rng = random.Random(1000 + tid)
    digest = hashlib.sha256()
    vocab = words(rng, 2000)
    for rnd in range(3 * SCALE):
        # Dicts of lists of strings, of varied sizes.
        table = {}
        for i in range(5000):
            key = f"{rng.choice(vocab)}-{tid}-{rnd}-{i}"
            table[key] = [rng.choice(vocab) * rng.randint(1, 5) for _ in range(rng.randint(0, 8))]
        # json round trip, then compare.
        text = json.dumps(table, sort_keys=True)
        back = json.loads(text)
        assert back == table, "json round trip changed the data"
        digest.update(hashlib.sha256(text.encode()).digest())
        # Sorting by several keys.
        items = sorted(table.items(), key=lambda kv: (len(kv[1]), kv[0][::-1]))
        digest.update(repr(items[:50]).encode())
        digest.update(str(len(items)).encode())
        # Grow a big string and a bytearray (realloc of large blocks), then
        # shrink them.
        parts = []
        total = 0
        while total < 3_000_000:
            s = rng.choice(vocab) * rng.randint(1, 200)
            parts.append(s)
            total += len(s)
        big = "|".join(parts)
        buf = bytearray()
        for p in parts[:5000]:
            buf += p.encode()
        del buf[: len(buf) // 2]
        digest.update(hashlib.sha256(big.encode()).digest())
        digest.update(hashlib.sha256(bytes(buf)).digest())
        # Sets and string methods.
        uniq = sorted(set(big.split("|")))
        digest.update(" ".join(uniq[:200]).upper().encode())
        # Hand a structure to the next thread and free the one we get: the
        # blocks are freed by a thread that did not allocate them.
        handoff_out.put({k: v for k, v in list(table.items())[:2000]})
        received = handoff_in.get()
        digest.update(str(sum(len(v) for v in received.values())).encode())
        del received, table, back, items, parts, big, uniq
    results[tid] = digest.hexdigest()


def main():
    queues = [queue.Queue() for _ in range(THREADS)]
    results = [None] * THREADS
    threads = [
        threading.Thread(target=work, args=(t, queues[(t + 1) % THREADS], queues[t], results))
        for t in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tid, r in enumerate(results):
        print(f"thread {tid}: {r}")
    combined = hashlib.sha256("".join(results).encode()).hexdigest()
    print(f"combined: {combined}")
    print("DONE")


if __name__ == "__main__":
    main()
