"""Single SAE latents: AUROCs, k-sparse probes, labels, the dashboard.

================  ================================================================
module            concept
================  ================================================================
``auroc``         per-latent AUROC with CIs, q-values, held-out scenarios
``autointerp``    latent labels from examples; the deception-label test
``dashboard``     the self-contained HTML pages of one SAE's latents
``effects``       logit effects, activation density, token text of examples
``separating``    separating latents, k-sparse probes, examples
``word_control``  the word control: "no"-vs-"yes" and within-word AUROCs
================  ================================================================
"""
