"""Models: the network factory (``factory``), DynUNet topology (``topology``) and safe checkpoints
(``checkpoint``). Packages and importers of foreign models land here too (docs/architecture.md)."""
