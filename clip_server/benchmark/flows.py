"""The Flow YAML the benchmark serves: read, rewritten for local ports, random weights or the
no-op ceiling, and the encoder's options read as the executor reads them."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from clip_server.benchmark import BenchmarkError
from clip_server.executors.parameters import EncoderParameters
from clip_server.model import factory
from clip_server.model.factory import EncoderOptions
from clip_server.model.registry import ModelSpec
from clip_server.resources import BUNDLED_FLOWS, bundled_flow
from clip_server.types import Runtime


class _FlowLoader(yaml.SafeLoader):
    """Reads jina's tagged mappings (`uses: !CLIPEncoder {...}`) as mappings with that `jtype`."""


def _construct_tagged(loader: _FlowLoader, tag: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return {'jtype': tag, **loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_FlowLoader.add_multi_constructor('!', _construct_tagged)


def load_flow(text: str) -> dict:
    """The Flow YAML as plain data; jina's tags become `jtype:` keys, which jina reads the same."""
    flow = yaml.load(text, Loader=_FlowLoader)
    if not isinstance(flow, dict) or flow.get('jtype') != 'Flow':
        raise BenchmarkError('the YAML does not describe a Flow: expected a mapping with "jtype: Flow"')
    return flow


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def absolute_py_modules(flow: dict, base_dir: Path) -> None:
    """Make relative `.py` paths absolute: the server reads a copy of the YAML from another folder."""
    for executor in flow.get('executors') or []:
        uses = executor.get('uses')
        holders = [executor, *([uses.get('metas') or {}] if isinstance(uses, dict) else [])]
        for holder in holders:
            if 'py_modules' in holder:
                holder['py_modules'] = [_absolute(entry, base_dir) for entry in _as_list(holder['py_modules'])]


def _absolute(entry: str, base_dir: Path) -> str:
    path = Path(entry).expanduser()
    if entry.endswith('.py') and not path.is_absolute() and (base_dir / path).exists():
        return str(base_dir / path)
    return entry


def use_local_ports(flow: dict, free_port: Callable[[], int]) -> int:
    """Serve the gateway on 127.0.0.1 with free ports (one per protocol); returns the gRPC one."""
    settings = flow.get('with') or {}
    gateway = flow.get('gateway') or {}
    if 'ssl_certfile' in settings or 'ssl_certfile' in gateway:
        raise BenchmarkError('the Flow serves TLS; the benchmark connects in plaintext, so give it a Flow without TLS')
    protocols = [str(p).lower() for p in _as_list(settings.get('protocol', 'grpc'))]
    if 'grpc' not in protocols:
        raise BenchmarkError(f'the Flow serves {", ".join(protocols)}; the benchmark needs gRPC among its protocols')
    ports = [free_port() for _ in protocols]
    settings['port'] = ports if isinstance(settings.get('protocol'), list) else ports[0]
    settings['host'] = '127.0.0.1'
    flow['with'] = settings
    return ports[protocols.index('grpc')]


def ceiling_flow(flow: dict, dim: int) -> dict:
    """The same Flow with a no-op executor in place of the encoder (the executors after it,
    such as an index, kept): the ceiling of the serving stack around the model."""
    noop = {
        'jtype': 'BenchmarkNoopEncoder',
        'with': {'dim': dim},
        'metas': {'py_modules': ['clip_server.benchmark.noop']},
    }
    return {**flow, 'executors': [{'name': 'noop', 'uses': noop}, *flow['executors'][1:]]}


@dataclass(frozen=True)
class ExecutorConfig:
    """The Flow's one executor: its class, the modules that define it, its `with:` and replicas."""

    jtype: str
    py_modules: tuple[str, ...]
    params: dict
    replicas: int = 1
    omp_threads: int | None = None  # OMP_NUM_THREADS in the executor's own `env:`


def executor_config(flow: dict) -> ExecutorConfig:
    """Read the encoder (the Flow's first executor) as jina would:
    `uses:` with its `with:` and `metas:`, overridden by `uses_with:`."""
    executors = flow.get('executors') or []
    if not executors:
        raise BenchmarkError('the Flow has no executor; the benchmark measures its first one, the encoder')
    executor = executors[0]
    uses = executor.get('uses')
    if not isinstance(uses, dict) or 'jtype' not in uses:
        raise BenchmarkError('the executor\'s "uses:" must be a mapping with "jtype:", as in the bundled Flow YAMLs')
    modules = _as_list((uses.get('metas') or {}).get('py_modules')) + _as_list(executor.get('py_modules'))
    omp = (executor.get('env') or {}).get('OMP_NUM_THREADS')
    return ExecutorConfig(
        jtype=uses['jtype'],
        py_modules=tuple(modules),
        params={**(uses.get('with') or {}), **(executor.get('uses_with') or {})},
        replicas=int(executor.get('replicas', 1)),
        omp_threads=int(omp) if omp else None,
    )


def encoder_parameters(config: ExecutorConfig) -> EncoderParameters:
    """The encoder's `with:` read by the executor's own code, defaults included."""
    return EncoderParameters.from_params(config.params)


def encoder_options(config: ExecutorConfig, threads: int) -> EncoderOptions:
    """The options the executor gives the factory; unless the YAML sets `intra_op_threads`, the
    threads of the executor's `OMP_NUM_THREADS`, else `threads`."""
    return encoder_parameters(config).encoder_options(default_threads=config.omp_threads or threads)


def executor_runtime(config: ExecutorConfig) -> Runtime:
    """Import the py_modules as jina does (they may register models) and ask the executor class."""
    runtime = None
    for module in map(_import, config.py_modules):
        executor_class = getattr(module, config.jtype, None)
        declared = getattr(executor_class, 'runtime', None)
        if isinstance(declared, Runtime):
            runtime = declared
    if runtime is None:
        raise BenchmarkError(f'no CLIPEncoder named {config.jtype} in py_modules {", ".join(config.py_modules)}')
    return runtime


def _import(entry: str) -> ModuleType:
    if not entry.endswith('.py'):
        return importlib.import_module(entry)
    spec = importlib.util.spec_from_file_location(Path(entry).stem, entry)
    if spec is None or spec.loader is None:
        raise BenchmarkError(f'cannot import py_module {entry}')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def use_random_weights(flow: dict, spec: ModelSpec, folder: Path) -> None:
    """Point the encoder at a random state dict of `spec`'s architecture, saved in `folder`, with
    its cache there too (exports of these weights are of no use later). Weights do not change speed."""
    import torch

    from clip_server.model.families.openclip import create_open_clip_model

    if factory.builder_for(spec).checkpoint_is_folder:
        raise BenchmarkError(f'--random-weights serves open_clip models; {spec.name} needs a checkpoint folder')
    path = folder / 'random-weights.pt'
    try:
        torch.save(create_open_clip_model(spec, None).state_dict(), path)
    except Exception as e:  # e.g. a `transformers` text tower whose config is not cached
        raise BenchmarkError(f'--random-weights cannot build {spec.name} here: {e}') from e
    executor = flow['executors'][0]
    executor['uses_with'] = {**(executor.get('uses_with') or {}), 'model_path': str(path)}
    os.environ['CLIP_SERVER_CACHE'] = str(folder / 'cache')


def read_flow(name: str) -> dict:
    source = bundled_flow(name) if name in BUNDLED_FLOWS else Path(name).expanduser()
    try:
        flow = load_flow(source.read_text(encoding='utf-8'))
    except (OSError, yaml.YAMLError) as e:
        raise BenchmarkError(f'cannot read {name}: {e}') from e
    absolute_py_modules(flow, Path(name).expanduser().resolve().parent)
    return flow
