"""Linear probes: layer profile, wording baselines and controls, SAE probes, verdicts, leakage.

======================  ===========================================================================
module                  concept
======================  ===========================================================================
``controls``            permutation p-values, scenario-identity probe
``layer_profile``       the layer profile stage and its controls
``layer_verdicts``      selection-aware peak layers, layers vs the wording baselines
``leakage``             SAEs that never saw the probe's test completions
``matched_sparsity``    STE against TopK at matched L0: a TopK k sweep beside the STE SAEs
``power``               what the verdicts can detect: power, false positives, coverage, simulated
``probe``               the study's probe, its cross-validation, monitor thresholds
``prompt_probe``        the last prompt token's probe and the scenario prior: known answers
``sae_controls``        the wording controls on SAE features
``sae_probes``          SAE probes against raw, per seed and without leakage
``sae_verdicts``        SAE vs raw and leakage verdicts across seeds
``solver``              the exact fast solver of the study's probe
``ste_comparison``      STE JumpReLU vs TopK vs threshold-0 JumpReLU
``wording``             wording baselines: TF-IDF, first tokens, input embeddings
``wording_controls``    deception or the answer word: polarity transfer, same word, falsehood, monitor
======================  ===========================================================================
"""
