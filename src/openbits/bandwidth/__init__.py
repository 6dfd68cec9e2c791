"""Bandwidth: the idle-bandwidth controller (what background jobs may use, and why) and the caps of BITS group policy."""

from .controller import Decision, IdleController, Sample
from .limiter import BandwidthPolicy, TokenBucket
from .sensing import LinkSensor

__all__ = ["BandwidthPolicy", "Decision", "IdleController", "LinkSensor", "Sample", "TokenBucket"]
