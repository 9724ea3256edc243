"""The book's inputs and vocabulary: config, scenarios, run directory, files, statistics.

==============  ===========================================================================
module          concept
==============  ===========================================================================
``config``      the typed run config: strict, frozen, one-line errors naming the field
``fileio``      files a kill cannot corrupt: atomic writes, JSON lines
``markdown``    markdown tables without an extra dependency
``rundir``      the run directory: every path of a run, its config, seeds, caches
``runlock``     one writer per run directory: an OS lock, lent to kernels
``runtime``     thread limits and progress bars
``scenarios``   the scenario prompts (data/scenarios.yaml)
``stats``       metrics, bootstrap CIs, the paired test, Holm
``vocabulary``  architectures, conditions, labels, CV modes, poolings; SAE ids (SAEKey)
==============  ===========================================================================
"""
