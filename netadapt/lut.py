"""Deprecated alias of `netadapt.latency`, kept so that existing imports keep working.

The lookup table moved into the `netadapt.latency` package (one concept per
module); import from there.
"""

from netadapt.latency import *  # noqa: F401,F403
from netadapt.latency import __all__  # noqa: F401
