"""Explanation maps: a class activation map (HiResCAM / Grad-CAM) and SmoothGrad for one label of a segmentation
model (:func:`medpipe.explain.run.explain`), and Grad-CAM of a 3D classifier
(:func:`medpipe.explain.classify.classifier_cam`)."""
