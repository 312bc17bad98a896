"""PEP: a reproduction of "Perceive, Excavate and Purify" (arXiv 2304.08826) as a pipeline."""

__version__ = "0.1.0"
