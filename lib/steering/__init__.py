"""Steering and ablation along latents and directions.

=========  ================================================================
module     concept
=========  ================================================================
``steer``  steering and ablation during sampling, re-judged
=========  ================================================================
"""
