"""Inference runtime: the runtime options (``options``), ONNX export, the Segmenter, its backends
(ONNX Runtime, PyTorch, TensorRT) and their factory ``backends.make_backend``, and the TensorRT
engine builder/cache/runner. See docs/deployment.md.

Submodules import their heavy dependencies (onnxruntime, TensorRT) lazily; importing this package
is cheap.
"""
