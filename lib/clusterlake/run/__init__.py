"""Orchestration: the scaffold every run shares (:mod:`.scaffold`), the nightly job's steps
(:mod:`.nightly`, wired by :func:`clusterlake.pipeline.run_job`), stable ids and lineage
(:mod:`.stable_ids`) and what a run returns and prints (:mod:`.result`). The update
(:mod:`clusterlake.update`) and the stream (:mod:`clusterlake.stream`) use the same scaffold."""
