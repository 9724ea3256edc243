"""The theme of every figure and the figures of the stages.

=================  ================================================================
module             concept
=================  ================================================================
``controls``       figures of stage 11: the wording controls by layer
``data_and_saes``  figures of stages 02-04: labels, activations, SAE training
``latents``        figures of stages 08-09
``probing``        figures of stages 05-06
``sparsity``       the TopK k sweep against the STE SAEs by L0 (stage 06)
``style``          theme, colours, names and saving of every figure
=================  ================================================================
"""
