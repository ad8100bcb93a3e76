"""``tether demo``: the whole story on one machine, then the attacks bearer tokens allow."""
