"""Evaluation: metrics in millimetres per case and label (``metrics/``), summaries and reports."""
