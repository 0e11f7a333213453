"""Inference: inputs -> predictor -> export onto the source grid -> sidecar; batch loops over cases."""
