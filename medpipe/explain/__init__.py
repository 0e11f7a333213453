"""Explanation maps (Grad-CAM, SmoothGrad) for one label of a trained model: :func:`medpipe.explain.run.explain`."""
