"""Importers: models trained elsewhere (nnU-Net v2 result folders) read safely and run with medpipe.

Nothing here is imported by ``medpipe --help``; torch and dynamic-network-architectures load on use.
"""
