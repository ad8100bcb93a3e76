"""Across trust domains: a peer tether's agents accepted within a ceiling, and its revocations followed.

``freshness`` is the one seam between the exchange (which refuses a peer's agents whose feed
went quiet, SECURITY FED-03) and the follower of the peer's revocation feed.
"""
