"""Sources of apps other than the config file and Redis: a SQL table (`sql`), an HTTP endpoint
(`http`). Each is an `ipe.apps.AppSource`; `ipe.app` picks one from `app_manager.driver`.
(The Redis source lives with the rest of the Redis backend, in `ipe.redis.apps`.)"""
