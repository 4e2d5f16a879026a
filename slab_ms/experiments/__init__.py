"""Experiments that train and measure: the corpus demo of PRepBN for language models (``lm_demo``)."""
