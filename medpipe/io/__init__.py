"""Reading and writing images, DICOM series geometry, and the geometry contract. Pure functions, no printing."""
