"""Runtimes: torch, ONNX Runtime and TensorRT, each behind the `Encoder` interface."""
