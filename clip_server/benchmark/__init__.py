"""Throughput of a Flow as clip_client sees it, beside the same model in-process and plain open_clip.

    python -m clip_server.benchmark FLOW_YAML [--seconds 8] [--skip-ceiling] [--skip-yardstick] [--texts-file F]
        [--random-weights] [--save DIR]

Everything is measured in one run on one machine, one cell after another (never two at once), so
the rows compare: what serving costs over the model in-process (and over the model alone, fed
prepared inputs: the machine's limit), what the gateway alone can carry (a no-op executor behind
the same gateway: the ceiling), and how the Flow's runtime and dtype fare against open_clip in fp32
(the yardstick). docs/benchmark.md explains each row.
"""

BATCH = 32  # items per request of the single client, and per in-process batch
IN_FLIGHT = 16  # concurrent single-item requests from the one async client
CURVE_IN_FLIGHT = (1, 4, 16, 64)  # the --save plot's points: single-item requests in flight
START_TIMEOUT = 1800.0  # seconds; a first start may download and convert a model


class BenchmarkError(Exception):
    """A Flow this benchmark cannot measure, or a server that failed; the message says which."""
