"""Sparse autoencoders: the model and its SAELens format, the architectures, the trainer, the stage.

=================  =============================================================================
module             concept
=================  =============================================================================
``architectures``  one module per SAE architecture (activation, SAELens fields, loss and step)
                   and the registry by name that the model, the format and the trainer consult
``codes``          SAE codes of completions on the SAE's own input kind
``fused_step``     the SAE trainer's hand-written step and fused Adam, shared by the architectures
``metrics``        FVU, L0, dead latents, the model's loss with the SAE spliced in
``model``          the SAE model and its SAELens on-disk format
``overview``       what notebook 04 shows: one budget line, a table that fits, which SAEs to draw
``train_grid``     the SAE stage: one SAE per grid cell and seed, exported
``trainer``        training one SAE on a matrix of activations
=================  =============================================================================
"""
