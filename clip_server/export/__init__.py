"""Deployment files from a Flow YAML: `python -m clip_server.export kubernetes|docker-compose`;
and a model as ONNX graphs for those deployments to serve: `python -m clip_server.export onnx`.

The Flow as containers (`flow`), then what each target adds (`kubernetes`, `compose`); the
model's graphs (`onnx`).
"""
