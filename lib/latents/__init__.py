"""Single SAE latents: AUROCs, k-sparse probes, labels, the dashboard.

==============  ================================================================
module          concept
==============  ================================================================
``auroc``       per-latent AUROC with CIs, q-values, held-out scenarios
``autointerp``  latent labels from examples; the deception-label test
``dashboard``   the self-contained HTML page of one SAE's latents
``separating``  separating latents, k-sparse probes, examples
==============  ================================================================
"""
