"""Training internals: events, data loaders, losses, checkpoint/RNG state and the :class:`Trainer` loop.

The public entry is :func:`medpipe.training.run.train`.
"""
