"""Inference runtime: ONNX export, the Segmenter, its backends (ONNX Runtime, PyTorch, TensorRT)
and the TensorRT engine builder/cache/runner. See docs/deployment.md.

Submodules import their heavy dependencies (onnxruntime, TensorRT) lazily; importing this package
is cheap.
"""
