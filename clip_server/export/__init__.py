"""Deployment files from a Flow YAML: `python -m clip_server.export kubernetes|docker-compose`.

The Flow as containers (`flow`), then what each target adds (`kubernetes`, `compose`).
"""
