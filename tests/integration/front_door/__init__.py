"""The front door's end-to-end modules, one private stack for all (conftest.py)."""
