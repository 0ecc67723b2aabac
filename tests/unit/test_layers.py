"""The package's shape, checked: layers import downwards only, and family/dtype decisions live in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / 'clip_server'


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob('*.py')}
TREES = {name: ast.parse(path.read_text(encoding='utf-8')) for name, path in MODULES.items()}


def imports(name: str) -> set[str]:
    """Every module `name` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f'{node.module}.{alias.name}' for alias in node.names)  # `from pkg import module`
    return found


def package_imports(name: str) -> set[str]:
    return {target for target in imports(name) if target in MODULES and target != name}


def test_the_import_graph_has_no_cycle():
    graph = {name: package_imports(name) - {'clip_server'} for name in MODULES}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail(f'import cycle: {" -> ".join(path[path.index(name) :] + [name])}')
        if name in done:
            return
        for target in graph[name]:
            visit(target, path + [name])
        done.add(name)

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize('name', sorted(n for n in MODULES if n.startswith('clip_server.model')))
def test_the_model_layer_imports_neither_serving_nor_executors(name):
    banned = {'jina', 'docarray', 'clip_server.executors', 'clip_server.flow_config', 'clip_server.__main__'}
    found = {target for target in imports(name) for ban in banned if target == ban or target.startswith(ban + '.')}
    assert not found, f'{name} imports {sorted(found)}'


@pytest.mark.parametrize('name', ['clip_server.types', 'clip_server.wire'])
def test_shared_types_and_the_wire_contract_import_nothing_of_the_package(name):
    assert not {t for t in imports(name) if t.startswith('clip_server')}


@pytest.mark.parametrize('name', sorted(n for n in MODULES if n.startswith('clip_server.gateway')))
def test_the_gateway_imports_no_executors_and_of_the_model_layer_only_its_registry(name):
    """The gateway talks to executors over the wire (`clip_server.wire`), not through their code."""
    found = {
        target
        for target in package_imports(name)
        if target.startswith('clip_server.executors')
        or (target.startswith('clip_server.model') and not target.startswith('clip_server.model.registry'))
    }
    assert not found, f'{name} imports {sorted(found)}'


def _compared_names(tree: ast.AST) -> list[str]:
    """Attribute names and string constants that take part in a comparison (==, !=, is, in)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                if isinstance(side, ast.Attribute):
                    names.append(side.attr)
                elif isinstance(side, ast.Constant) and isinstance(side.value, str):
                    names.append(side.value)
    return names


@pytest.mark.parametrize('name', sorted(MODULES))
def test_family_and_dtype_are_not_compared_outside_the_tables(name):
    """Which family runs where is the factory's table; which dtype a runtime runs is types.py's."""
    compared = _compared_names(TREES[name])
    assert 'family' not in compared, f'{name} compares a model family; ask the factory table instead'
    strings = {'fp32', 'fp16', 'bf16', 'open_clip', 'mclip', 'hf_text'} & set(compared)
    assert not strings, f'{name} compares {sorted(strings)} as strings; use clip_server.types'


MOST_LINES = 400  # past this a module holds more than one job: split it by job


@pytest.mark.parametrize('name', sorted(MODULES))
def test_no_module_is_longer_than_one_job(name):
    lines = len(MODULES[name].read_text(encoding='utf-8').splitlines())
    assert lines <= MOST_LINES, f'{name} has {lines} lines: split it by job'


def test_the_architecture_doc_names_every_folder():
    """docs/architecture.md is where a newcomer finds where each behaviour lives."""
    text = (PACKAGE.parent / 'docs' / 'architecture.md').read_text(encoding='utf-8')
    folders = {path.parent.relative_to(PACKAGE).as_posix() for path in MODULES.values()} - {'.'}
    missing = [folder for folder in sorted(folders) if f'{folder}/' not in text]
    assert not missing, f'docs/architecture.md does not mention {missing}'


CONTRACT_FILES = {'textual.onnx', 'visual.onnx'}


@pytest.mark.parametrize('name', sorted(MODULES))
def test_only_the_onnx_folder_contract_names_its_files(name):
    """Writer, readers and the factory import the folder's file names from `onnx_folder`."""
    if name == 'clip_server.model.runtimes.onnx_folder':
        return
    spelt = {
        node.value for node in ast.walk(TREES[name]) if isinstance(node, ast.Constant) and node.value in CONTRACT_FILES
    }
    assert not spelt, f'{name} spells {sorted(spelt)}; import it from clip_server.model.runtimes.onnx_folder'
