"""Kept so that `from rest_support import ...` goes on working: the helpers are in
`support.rest`, the `rest_server` fixture in tests/conftest.py."""

from support.rest import *  # noqa: F403
from support.rest import rest_server as shared_server  # noqa: F401
