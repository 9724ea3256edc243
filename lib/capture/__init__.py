"""Completions and their activations: sampling, resid_post capture, labelled sets.

===============  ================================================================
module           concept
===============  ================================================================
``activations``  true resid_post capture of every layer
``labelled``     activations joined with labels for later stages
``sampling``     same-prompt temperature sampling
===============  ================================================================
"""
