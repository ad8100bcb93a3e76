"""``tether bench``: every hot path measured against a floor taken in the same run."""
