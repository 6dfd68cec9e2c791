"""Bandwidth: the caps of BITS group policy now; the idle-bandwidth controller later."""

from .limiter import BandwidthPolicy, TokenBucket

__all__ = ["BandwidthPolicy", "TokenBucket"]
