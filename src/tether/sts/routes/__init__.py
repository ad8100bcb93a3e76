"""Thin HTTP edges of the STS: parse strictly, call one use case, render."""
