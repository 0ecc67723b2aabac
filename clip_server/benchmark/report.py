"""The benchmark's report: the markdown tables, the ratios, and the machine it ran on."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from clip_server.benchmark.measure import CurvePoint, Rate, Row, ServerResult

HEADER = (
    'what',
    'texts/s',
    'images/s',
    'texts vs yardstick',
    'images vs yardstick',
    'text p50/p99 ms',
    'image p50/p99 ms',
)


def ratio(rate: Rate | None, base: Rate | None) -> str:
    return f'{rate.per_second / base.per_second:.2f}' if rate and base else '–'


def _per_second(rate: Rate | None) -> str:
    return f'{rate.per_second:.1f}' if rate else '–'


def _latency(rate: Rate | None) -> str:
    return '{:.1f} / {:.1f}'.format(*rate.percentiles()) if rate and rate.latencies_ms else '–'


def _markdown(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    return '\n'.join(f'| {" | ".join(cells)} |' for cells in [header, ('---',) * len(header), *lines])


def markdown_table(rows: Sequence[Row], yardstick: Row | None) -> str:
    """One line per row; the ratio columns are empty without a yardstick."""
    lines = []
    for row in rows:
        texts_base, images_base = (yardstick.texts, yardstick.images) if yardstick else (None, None)
        lines.append(
            (
                row.what,
                _per_second(row.texts),
                _per_second(row.images),
                ratio(row.texts, texts_base),
                ratio(row.images, images_base),
                _latency(row.texts),
                _latency(row.images),
            )
        )
    return _markdown(HEADER, lines)


def server_ratios(server_rows: Sequence[Row], base: Row, base_name: str) -> list[str]:
    """How much of `base`'s rate (in-process, or model-only) each server load keeps."""
    return [
        f'server / {base_name}, {row.what}: texts {ratio(row.texts, base.texts)}, '
        f'images {ratio(row.images, base.images)}'
        for row in server_rows
    ]


def curve_table(curve: Sequence[CurvePoint]) -> str:
    """The --save plot's points, so the saved markdown holds its numbers too."""
    header = ('single-item requests in flight', 'texts/s', 'images/s', 'text p50/p99 ms', 'image p50/p99 ms')
    lines = [
        (
            str(point.in_flight),
            _per_second(point.texts),
            _per_second(point.images),
            _latency(point.texts),
            _latency(point.images),
        )
        for point in curve
    ]
    return _markdown(header, lines)


def cpu_name(cpuinfo: Path = Path('/proc/cpuinfo')) -> str:
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ''
    match = re.search(r'^model name\s*:\s*(.+)$', text, re.MULTILINE)
    return match[1].strip() if match else 'unknown'


def _mib(size: int) -> str:
    return f'{size / (1 << 20):.0f} MiB'


def machine_lines(server: ServerResult, flow_line: str, in_process_line: str, threads: int) -> list[str]:
    rss = server.peak_rss
    return [
        f'CPU: {cpu_name()}; cores: {os.cpu_count()}; inference threads in-process: {threads}',
        f'flow: {flow_line}',
        f'in-process: {in_process_line}',
        f'cold start: {server.cold_start_s:.1f} s (spawning `python -m clip_server` to its first encoded text)',
        'peak RSS of the server: '
        + (f'{_mib(rss[0])} (sum of the peaks of its {rss[1]} processes)' if rss else 'unknown (no /proc)'),
    ]
