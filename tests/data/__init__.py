"""Test and benchmark data loaders (see loaders.py); not part of the product."""
