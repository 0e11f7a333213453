"""Batch inference at scale: a per-case ledger in the output folder, local worker processes (one per GPU or N on
the CPU) and Slurm job arrays through submitit.

- :func:`medpipe.batch.run.run_batch`: prepare the ledger and run (``medpipe batch``).
- :func:`medpipe.batch.status.batch_status` / :func:`medpipe.batch.report.write_report` (``medpipe batch status``).
- :mod:`medpipe.batch.ledger`: the claim / lease / commit rules; :mod:`medpipe.batch.adapter`: the one coupling to
  the predictor.
"""
