"""Where the time goes: cProfile of an in-process loop, and py-spy of a running process."""

import cProfile
import io
import pstats
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.common import py_spy_binary


def cpu_per_call(fn: Callable[[], object], count: int) -> float:
    """CPU µs of this process per call of `fn`, over `count` calls after one warm-up call."""
    fn()
    t0 = time.process_time()
    for _ in range(count):
        fn()
    return (time.process_time() - t0) * 1e6 / count


def cprofile(fn: Callable[[], object], count: int) -> tuple[pstats.Stats, float]:
    """CPU µs per call without the profiler (`cpu_per_call`), then `count` more calls under
    cProfile with the process CPU clock: 2 x count + 1 calls in all."""
    plain = cpu_per_call(fn, count)
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for _ in range(count):
        fn()
    profile.disable()
    return pstats.Stats(profile), plain


def top(stats: pstats.Stats, sort: str, limit: int, calls: int) -> str:
    """pstats' table, trimmed: paths shortened, times per call of the profiled loop (µs)."""
    rows = []
    entries = stats.stats  # type: ignore[attr-defined]
    for (path, line, func), (_cc, nc, tt, ct, _callers) in entries.items():
        rows.append((ct if sort == "cumulative" else tt, tt, ct, nc, _short(path), line, func))
    rows.sort(reverse=True)
    out = [f"{'cum µs':>8} {'own µs':>8} {'calls':>6}  function (per profiled call)"]
    for _key, tt, ct, nc, path, line, func in rows[:limit]:
        out.append(
            f"{ct * 1e6 / calls:8.0f} {tt * 1e6 / calls:8.0f} {nc / calls:6.1f}  "
            f"{func} ({path}:{line})"
        )
    return "\n".join(out)


def cumulative_of(stats: pstats.Stats, matches: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Cumulative seconds of named functions: label -> (path suffix, function name)."""
    found = dict.fromkeys(matches, 0.0)
    entries = stats.stats  # type: ignore[attr-defined]
    for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in entries.items():
        for label, (suffix, name) in matches.items():
            if func == name and path.endswith(suffix):
                found[label] += ct
    return found


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def pstats_text(stats: pstats.Stats, limit: int) -> str:
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(limit)
    return buffer.getvalue()


def py_spy(pid: int, seconds: int, out: Path, *, gil: bool = False) -> str | None:
    """Sample a running process with py-spy for `seconds`; a table of the functions where
    its threads spent their (non-idle) samples, or with `gil` only the thread holding the
    interpreter lock (where its CPU goes: a thread waiting for the lock is not counted): own
    and inclusive shares. None when py-spy is unavailable or not permitted here."""
    binary = py_spy_binary()
    if binary is None:
        return None
    argv = [binary, "record", "-p", str(pid), "-d", str(seconds), "-r", "100"]
    argv += ["-f", "raw", "-o", str(out), *(["--gil"] if gil else [])]
    try:
        subprocess.run(argv, capture_output=True, timeout=seconds + 30, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return None
    whose = "of the thread holding the GIL" if gil else "of the busy threads"
    lines = [f"{total} samples {whose} at 100 Hz over {seconds} s", ""]
    lines.append(f"{'own %':>6}  function (top by own samples)")
    lines += [f"{n * 100 / total:6.1f}  {f}" for f, n in own.most_common(15)]
    lines += ["", f"{'incl %':>6}  function (top by inclusive samples, app and I/O)"]
    interesting = [
        (f, n)
        for f, n in inclusive.most_common(200)
        if any(k in f for k in ("delivery/", "identity/", "schema/", "huey/", "psycopg", "redis"))
        or any(k in f for k in ("requests/", "urllib3", "asgiref", "channels"))
    ]
    lines += [f"{n * 100 / total:6.1f}  {f}" for f, n in interesting[:25]]
    return "\n".join(lines)


def _frame(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file path shortened)'."""
    func, _, rest = frame.partition(" (")
    path = rest.rstrip(")").rsplit(":", 1)[0]
    return f"{func} ({_short(path)})"
