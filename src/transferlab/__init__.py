"""transferlab: a folder of labelled images in, an honestly evaluated, explainable classifier out."""

__version__ = "0.1.0"
