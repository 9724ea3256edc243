"""Linear probes: layer profile, wording baselines, SAE probes, verdicts, leakage.

==================  ================================================================
module              concept
==================  ================================================================
``controls``        permutation p-values, scenario-identity probe
``layer_profile``   the layer profile stage and its controls
``layer_verdicts``  selection-aware peak layers, layers vs the text baseline
``leakage``         SAEs that never saw the probe's test completions
``probe``           the study's probe, its cross-validation, monitor thresholds
``sae_probes``      SAE probes against raw, per seed and without leakage
``sae_verdicts``    SAE vs raw and leakage verdicts across seeds
``solver``          the exact fast solver of the study's probe
``ste_comparison``  STE JumpReLU vs TopK vs threshold-0 JumpReLU
``wording``         TF-IDF features of the completion text
==================  ================================================================
"""
