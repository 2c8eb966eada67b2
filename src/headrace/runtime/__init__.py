"""The engine (a short loop) and its parts: stages, batcher, scorer, write order, outputs,
ledger, backpressure, commits and run state; model versions and their rollout."""
