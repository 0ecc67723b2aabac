"""The benchmark's helpers: reading and rewriting a Flow YAML, the in-process rows on a tiny model, the
in-flight curve on a stand-in client, and the report and its saved files (no server is started)."""

import asyncio
import dataclasses
import inspect
import io
import itertools
import os
import sys
import textwrap

import open_clip
import pytest
import torch
import yaml
from PIL import Image

from clip_server.benchmark import BATCH, BenchmarkError
from clip_server.benchmark.__main__ import main
from clip_server.benchmark.flows import (
    absolute_py_modules,
    ceiling_flow,
    encoder_options,
    executor_config,
    load_flow,
    use_local_ports,
    use_random_weights,
)
from clip_server.benchmark.inputs import batches, captions, photo_jpeg
from clip_server.benchmark.measure import CurvePoint, Rate, Row, encoder_rows, in_flight_curve
from clip_server.benchmark.processes import session_pids
from clip_server.benchmark.report import cpu_name, curve_table, markdown_table, server_ratios
from clip_server.benchmark.save import DPI, FIGURE_INCHES, save
from clip_server.executors import clip_onnx, clip_tensorrt, clip_torch
from clip_server.executors.encoder_base import CLIPEncoderBase
from clip_server.executors.parameters import EncoderParameters
from clip_server.model.factory import EncoderOptions
from clip_server.model.registry import lookup
from clip_server.types import Runtime

FLOW = textwrap.dedent(
    """\
    jtype: Flow
    with:
      port: 51000
    gateway:
      prefetch: 10
    executors:
      - name: clip_o
        replicas: 2
        env:
          OMP_NUM_THREADS: '3'
        uses_with:
          dtype: fp32
        uses:
          jtype: CLIPEncoder
          with:
            name: ViT-B-32::openai
            dtype: fp16
            minibatch_size: 8
            model_path: weights.pt
          metas:
            py_modules:
              - my_models.py
              - clip_server.executors.clip_onnx
    """
)


def ports(*numbers):
    return iter(numbers).__next__


def test_a_single_port_becomes_a_free_local_one():
    flow = load_flow(FLOW)
    assert use_local_ports(flow, ports(40001)) == 40001
    assert flow['with'] == {'port': 40001, 'host': '127.0.0.1'}


def test_each_protocol_gets_a_port_and_grpc_is_the_one_measured():
    flow = load_flow('jtype: Flow\nwith:\n  protocol: [http, grpc]\n  port: [8080, 51000]\n')
    assert use_local_ports(flow, ports(40001, 40002)) == 40002
    assert flow['with']['port'] == [40001, 40002]


@pytest.mark.parametrize(
    'settings, message',
    [('protocol: http', 'needs gRPC'), ('ssl_certfile: cert.pem', 'TLS')],
)
def test_flows_the_client_cannot_reach_are_refused(settings, message):
    with pytest.raises(BenchmarkError, match=message):
        use_local_ports(load_flow(f'jtype: Flow\nwith:\n  {settings}\n'), ports(40001))


def test_the_executor_is_read_as_jina_reads_it():
    config = executor_config(load_flow(FLOW))
    assert config.jtype == 'CLIPEncoder'
    assert config.py_modules == ('my_models.py', 'clip_server.executors.clip_onnx')
    assert config.params['dtype'] == 'fp32'  # uses_with wins over uses: with:
    assert (config.replicas, config.omp_threads) == (2, 3)


def test_encoder_options_follow_the_executor():
    options = encoder_options(executor_config(load_flow(FLOW)), threads=16)
    assert (options.model_path, options.dtype, options.max_batch) == ('weights.pt', 'fp32', 8)
    assert options.threads == 3  # the executor's own OMP_NUM_THREADS


def test_unset_options_take_the_executors_defaults():
    options = encoder_options(executor_config(load_flow('jtype: Flow\nexecutors:\n  - uses: {jtype: E}\n')), 16)
    assert (options.dtype, options.max_batch, options.jit, options.threads) == ('auto', 32, False, 16)


def test_the_parameters_read_are_the_executors_own():
    """Each field is a `with:` key of some CLIPEncoder, with the default one of them declares."""
    declared: dict[str, set] = {}
    for executor in (CLIPEncoderBase, clip_torch.CLIPEncoder, clip_onnx.CLIPEncoder, clip_tensorrt.CLIPEncoder):
        for name, parameter in inspect.signature(executor.__init__).parameters.items():
            declared.setdefault(name, set()).add(parameter.default)
    for field in dataclasses.fields(EncoderParameters):
        assert field.default in declared[field.name], field.name


def test_a_tagged_executor_is_read_like_a_jtype():
    text = 'jtype: Flow\nexecutors:\n  - uses: !CLIPEncoder\n      with: {name: RN50}\n      metas: {py_modules: m}\n'
    config = executor_config(load_flow(text))
    assert (config.jtype, config.params, config.py_modules) == ('CLIPEncoder', {'name': 'RN50'}, ('m',))


@pytest.mark.parametrize(
    'text, message',
    [
        ('jtype: Executor\n', 'does not describe a Flow'),
        ('jtype: Flow\n', 'has no executor'),
        ('jtype: Flow\nexecutors:\n  - uses: encoder.yml\n', 'must be a mapping'),
    ],
)
def test_flows_without_one_readable_executor_are_refused(text, message):
    with pytest.raises(BenchmarkError, match=message):
        executor_config(load_flow(text))


def test_relative_module_files_become_absolute(tmp_path):
    (tmp_path / 'my_models.py').write_text('')
    flow = load_flow(FLOW)
    absolute_py_modules(flow, tmp_path)
    assert executor_config(flow).py_modules == (str(tmp_path / 'my_models.py'), 'clip_server.executors.clip_onnx')


def test_the_ceiling_keeps_the_gateway_and_replaces_the_executor():
    flow = load_flow(FLOW)
    ceiling = ceiling_flow(flow, dim=512)
    assert (ceiling['with'], ceiling['gateway']) == (flow['with'], flow['gateway'])
    assert executor_config(ceiling).params == {'dim': 512}
    assert executor_config(flow).jtype == 'CLIPEncoder'  # the Flow itself is unchanged
    assert yaml.safe_load(yaml.safe_dump(ceiling)) == ceiling


def test_inputs_are_the_same_on_every_run():
    assert captions(5) == captions(5)
    assert all(10 <= len(caption.split()) <= 25 for caption in captions(50))
    assert photo_jpeg(1) == photo_jpeg(1) != photo_jpeg(2)
    assert Image.open(io.BytesIO(photo_jpeg(1))).size == (640, 480)


def test_batches_go_round():
    assert list(itertools.islice(batches(range(5), 2), 3)) == [[0, 1], [2, 3], [0, 1]]


def test_the_table_has_a_line_per_row_and_ratios_to_the_yardstick():
    yardstick = Row('yardstick', Rate(100.0, (10.0,)), Rate(50.0, (20.0,)))
    server = Row('server', Rate(80.0, tuple(float(ms) for ms in range(1, 101))), None)
    lines = markdown_table([server, yardstick], yardstick).splitlines()
    assert lines[0].startswith('| what | texts/s |') and lines[1].startswith('| --- |')
    assert lines[2] == '| server | 80.0 | – | 0.80 | – | 50.5 / 99.0 | – |'
    assert lines[3] == '| yardstick | 100.0 | 50.0 | 1.00 | 1.00 | 10.0 / 10.0 | 20.0 / 20.0 |'
    assert '| – | – |' in markdown_table([server], None)
    assert server_ratios([server], yardstick, 'model-only') == ['server / model-only, server: texts 0.80, images –']


def rate(per_second: float) -> Rate:
    return Rate(per_second, (10.0, 12.0, 14.0))


CURVE = [CurvePoint(level, rate(10.0 * level**0.5), rate(3.0 * level**0.5)) for level in (1, 4, 16, 64)]


def test_the_curve_table_has_a_line_per_level():
    lines = curve_table(CURVE).splitlines()
    assert lines[0].startswith('| single-item requests in flight | texts/s | images/s |')
    assert lines[2:] == [
        f'| {level} | {texts:.1f} | {images:.1f} | 12.0 / 14.0 | 12.0 / 14.0 |'
        for level, texts, images in ((1, 10, 3), (4, 20, 6), (16, 40, 12), (64, 80, 24))
    ]


def test_save_writes_the_report_and_a_png_of_the_curve(tmp_path):
    model_only = Row('model only', rate(100.0), rate(30.0))
    report = 'flow: tiny\n\n' + markdown_table([model_only], None) + '\n\n' + curve_table(CURVE)
    markdown, plot = save(tmp_path / 'out', report, CURVE, model_only, 'tiny-vit on PyTorch')
    assert markdown.read_text(encoding='utf-8') == report + '\n'
    assert '| model only | 100.0 | 30.0 |' in markdown.read_text(encoding='utf-8')
    assert plot.read_bytes().startswith(b'\x89PNG\r\n\x1a\n')
    with Image.open(plot) as image:
        assert image.format == 'PNG'
        assert image.size == (round(FIGURE_INCHES[0] * DPI), round(FIGURE_INCHES[1] * DPI))
        assert len(image.getcolors(maxcolors=1 << 16) or ()) > 10  # drawn on, not a blank canvas


def test_without_matplotlib_save_names_the_extra_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if not installed
    assert main(['no-such-flow.yml', '--save', str(tmp_path)]) == 1  # the flow is never read
    assert 'pip install "clip-server[test]"' in capsys.readouterr().err


def test_the_model_only_row_times_the_executors_model_on_prepared_inputs(tiny_weights):
    options = EncoderOptions(model_path=tiny_weights['tiny-vit'], dtype='fp32', threads=1, max_batch=8)
    texts, jpegs = captions(2 * BATCH), [photo_jpeg(seed, 160, 120) for seed in range(BATCH)]
    rows = encoder_rows(lookup('tiny-vit'), Runtime.TORCH, options, texts, jpegs, seconds=0.05)
    assert rows.model_only.what == f'model only: PyTorch fp32, batch {BATCH}, tokens and pixels prepared beforehand'
    assert rows.in_process.what.startswith('in-process: PyTorch fp32, batch 32, tokenizing')
    for row in (rows.model_only, rows.in_process):
        assert row.texts and row.images and row.texts.per_second > 0 and row.images.per_second > 0
        assert row.texts.latencies_ms and row.images.latencies_ms
    assert rows.description.startswith('PyTorch, cpu')


class StandInClient:
    """Answers `aencode` like clip_client, after a pause; counts the requests in flight at once."""

    def __init__(self):
        self.in_flight = self.most_in_flight = 0

    async def aencode(self, content, show_progress):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.002)
        self.in_flight -= 1
        return list(content)


def test_the_curve_keeps_each_level_in_flight():
    client = StandInClient()
    curve = in_flight_curve(client, captions(8), [photo_jpeg(0, 160, 120)], seconds=0.05, levels=(1, 4))
    assert [point.in_flight for point in curve] == [1, 4]
    assert client.most_in_flight == 4
    assert all(point.texts.per_second > 0 and point.images.per_second > 0 for point in curve)
    assert curve[1].texts.per_second > 2 * curve[0].texts.per_second  # a pause overlaps with itself


def test_session_processes_are_found_in_proc(tmp_path):
    for pid, session in ((10, 10), (11, 10), (12, 99)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / 'stat').write_text(f'{pid} (python -m (x)) S 1 {session} {session} 0 0')
    assert sorted(session_pids(10, tmp_path)) == [10, 11]


def test_cpu_name_comes_from_cpuinfo(tmp_path):
    (tmp_path / 'cpuinfo').write_text('processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n')
    assert cpu_name(tmp_path / 'cpuinfo') == 'Some CPU @ 2.0GHz'
    assert cpu_name(tmp_path / 'missing') == 'unknown'


def test_random_weights_serve_the_architecture_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_SERVER_CACHE', str(tmp_path / 'user-cache'))
    flow = load_flow('jtype: Flow\nexecutors:\n  - uses: {jtype: CLIPEncoder, with: {name: tiny-vit}}\n')
    use_random_weights(flow, lookup('tiny-vit'), tmp_path)
    weights = executor_config(flow).params['model_path']
    assert torch.load(weights, weights_only=True).keys() == open_clip.create_model('tiny-vit').state_dict().keys()
    assert os.environ['CLIP_SERVER_CACHE'] == str(tmp_path / 'cache')  # its exports do not fill the user's cache
    with pytest.raises(BenchmarkError, match='--random-weights serves open_clip models'):
        use_random_weights(flow, lookup('M-CLIP/XLM-Roberta-Large-Vit-B-32'), tmp_path)
