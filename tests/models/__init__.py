"""Tests of medpipe.models: packages, ONNX, importers."""
