"""The language models: loading and hooks, the organism, registry and random models.

=================  ================================================================
module             concept
=================  ================================================================
``loading``        loading causal LMs, decoder layers, residual hooks
``organism``       the embedded model organism with planted behaviour
``random_models``  random-weight models of the study's shapes
``registry``       trained models shipped in PyPI packages (GGUF), converted once
=================  ================================================================
"""
