"""The command line of `python -m clip_server.benchmark`."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clip_server.benchmark import BATCH, CURVE_IN_FLIGHT, BenchmarkError
from clip_server.benchmark.flows import (
    ExecutorConfig,
    ceiling_flow,
    encoder_options,
    encoder_parameters,
    executor_config,
    executor_runtime,
    read_flow,
    use_random_weights,
)
from clip_server.benchmark.inputs import captions, photo_jpeg
from clip_server.benchmark.measure import EncoderRows, Row, ServerResult, encoder_rows, measure_server, yardstick_row
from clip_server.benchmark.report import curve_table, machine_lines, markdown_table, server_ratios
from clip_server.benchmark.save import require_plotting, save
from clip_server.model.factory import resolve
from clip_server.model.registry import ModelSpec
from clip_server.types import ClipServerError, Runtime


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m clip_server.benchmark', description=__doc__.splitlines()[0])
    parser.add_argument('flow_yaml', metavar='FLOW_YAML', help='the Flow to measure, or a bundled one (torch-flow.yml)')
    parser.add_argument('--seconds', type=float, default=8.0, help='measuring time of each cell (default: 8)')
    parser.add_argument('--skip-ceiling', action='store_true', help='do not measure the gateway with a no-op executor')
    parser.add_argument('--skip-yardstick', action='store_true', help='do not measure open_clip in fp32')
    parser.add_argument('--texts-file', type=Path, help='texts to send, one per line (default: generated captions)')
    parser.add_argument(
        '--random-weights',
        action='store_true',
        help="serve random weights of the model's architecture: no download, same speed (open_clip models)",
    )
    parser.add_argument(
        '--save',
        type=Path,
        metavar='DIR',
        help='also measure the server at 1, 4, 16 and 64 single-item requests in flight, and write the report '
        'to DIR/benchmark.md and that curve to DIR/benchmark.png (needs matplotlib)',
    )
    return parser.parse_args(argv)


def _texts(path: Path | None) -> list[str]:
    if path is None:
        return captions(256)
    texts = [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
    if len(texts) < BATCH:
        raise BenchmarkError(f'{path} has {len(texts)} texts; give at least {BATCH}')
    return texts


def _flow_line(server: ServerResult, spec: ModelSpec, runtime: Runtime, config: ExecutorConfig) -> str:
    described = server.ready_line or f'{spec.name} on {runtime.label}, dtype {encoder_parameters(config).dtype}'
    return f'{described}; replicas: {config.replicas}'


@dataclass(frozen=True)
class _Measured:
    """Every cell of one run, and the lines that say what ran where."""

    server: ServerResult
    encoder: EncoderRows
    rows: list[Row]  # the table's, in order
    yardstick: Row | None
    flow_line: str
    machine: list[str]


def _measure(args: argparse.Namespace) -> _Measured:
    """Every measurement in sequence, one server at a time."""
    flow = read_flow(args.flow_yaml)
    runtime = executor_runtime(executor_config(flow))
    spec = resolve(encoder_parameters(executor_config(flow)).name)
    texts, jpegs = _texts(args.texts_file), [photo_jpeg(seed) for seed in range(2 * BATCH)]
    threads = int(os.environ.get('OMP_NUM_THREADS') or 0) or os.cpu_count() or 1
    curve_levels = CURVE_IN_FLIGHT if args.save else ()
    with tempfile.TemporaryDirectory(prefix='clip-benchmark-') as scratch:
        if args.random_weights:
            use_random_weights(flow, spec, Path(scratch))
        config = executor_config(flow)
        server = measure_server(flow, Path(scratch), 'server', texts, jpegs, args.seconds, curve_levels)
        rows = list(server.rows)
        if not args.skip_ceiling:
            ceiling = ceiling_flow(flow, spec.dim)
            rows += measure_server(ceiling, Path(scratch), 'ceiling', texts, jpegs, args.seconds).rows
        options = encoder_options(config, threads)
        encoder = encoder_rows(spec, runtime, options, texts, jpegs, args.seconds)
        rows += [encoder.in_process, encoder.model_only]
        yardstick = None if args.skip_yardstick else yardstick_row(spec, options, texts, jpegs, args.seconds)
    flow_line = _flow_line(server, spec, runtime, config)
    machine = machine_lines(server, flow_line, encoder.description, options.threads or threads)
    return _Measured(server, encoder, rows + ([yardstick] if yardstick else []), yardstick, flow_line, machine)


def _report(measured: _Measured) -> str:
    """The lines about the machine, the table, what serving keeps of each in-process rate, and the curve if measured."""
    server_rows, encoder = measured.server.rows, measured.encoder
    ratios = server_ratios(server_rows, encoder.in_process, 'in-process')
    ratios += server_ratios(server_rows, encoder.model_only, 'model-only')
    curve = ['', curve_table(measured.server.curve)] if measured.server.curve else []
    return '\n'.join([*measured.machine, '', markdown_table(measured.rows, measured.yardstick), '', *ratios, *curve])


def run(args: argparse.Namespace) -> str:
    """Measure, report, and with --save write the report and the plot; returns the report."""
    if args.save:
        require_plotting()
    measured = _measure(args)
    report = _report(measured)
    if args.save:
        paths = save(args.save, report, measured.server.curve, measured.encoder.model_only, measured.flow_line)
        print(f'saved {" and ".join(map(str, paths))}', file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    args = _parse_args(argv)
    # Measure the server, not jina's telemetry posts or clip_client's online version check.
    os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
    os.environ.setdefault('NO_VERSION_CHECK', '1')
    os.environ.setdefault('JINA_HIDE_SURVEY', '1')
    try:
        print(run(args))
    except (BenchmarkError, ClipServerError) as e:
        print(f'clip_server.benchmark: error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
