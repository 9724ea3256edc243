"""deception-saes: the shared package of the research book.

``lib`` is grouped by concept into subpackages, on levels: a module imports modules of its own
subpackage and of subpackages on lower levels, never higher, so the package has no import
circle and a reader can start at the bottom. Each subpackage's docstring lists its modules.
``tests/unit/test_architecture.py`` reads this table and holds the code to it (and to no circle
between modules inside a subpackage).

=====  ==============  ===========================================================================
level  subpackage      concept
=====  ==============  ===========================================================================
0      ``core``        the book's inputs and vocabulary: config, scenarios, run directory, files, stats
1      ``models``      the language models: loading and hooks, the organism, registry, random models
2      ``judging``     labels for completions: the keyword and Gemini judges, the labelling stage
3      ``capture``     completions and their activations: sampling, resid_post capture, labelled sets
4      ``sae``         sparse autoencoders: the model and its SAELens format, the trainer, the stage
5      ``study``       the original study's published numbers and SAEs
6      ``probing``     linear probes: layer profile, wording baselines, SAE probes, verdicts, leakage
7      ``figures``     the theme of every figure and the figures of stages 02-06
8      ``latents``     single SAE latents: AUROCs, k-sparse probes, labels, the dashboard
9      ``steering``    steering and ablation along latents and directions
10     ``report``      what a run found: summary, host-proof facts, publishing, runs side by side
11     ``pipeline``    running the book: stages, the grid, notebook kernels, locks lent, costs
=====  ==============  ===========================================================================

Commands: ``python -m lib.pipeline.grid`` (the book), ``python -m lib.core.runlock`` (a command
as a run's writer), ``python -m lib.report.publish`` (a run into ``figures/`` and the README).
"""
