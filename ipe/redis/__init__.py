"""The Redis backend: what nodes share through Redis (chosen by `ipe.app` when `redis` is set)."""
