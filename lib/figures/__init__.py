"""The theme of every figure and the figures of stages 02-06.

=================  ================================================================
module             concept
=================  ================================================================
``data_and_saes``  figures of stages 02-04: labels, activations, SAE training
``latents``        figures of stages 08-09
``probing``        figures of stages 05-06
``style``          theme, colours, names and saving of every figure
=================  ================================================================
"""
