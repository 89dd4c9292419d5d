"""The garbage collector of the ASGI server process, which holds every socket of its clients.

With CPython's thresholds (700, 10, 10) a daphne process holding 1,000 subscribers (~530,000
tracked objects) ran a full collection every ~7 s while 100 events/s flowed, each stopping the
event loop for 0.3-0.65 s: the receipt p99 of the fan-out bench was 0.65-1.0 s against a median
of 3 ms. Most of what it scanned was alive, promoted only because it was still in flight (a
message being handled) when a young collection ran. A young generation of 50,000 objects lets
those die before they are looked at: no full collection during the bench's 20 s and a p99 of
32 ms, for young collections of up to ~85 ms each a few seconds apart (bench/ANALYSIS.md)."""

import gc

THRESHOLDS = (50_000, 20, 10)


def tune_collector() -> None:
    """Freeze what importing the project made (~161,000 objects that live as long as the
    process: no full collection scans them again), then raise the young generation's size."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
