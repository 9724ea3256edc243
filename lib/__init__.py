"""deception-saes: the shared package of the research book.

One module per stage of the experiment:

=====================  ======================================================  ==========
module                 stage                                                   notebook
=====================  ======================================================  ==========
``config``             the typed run config (``configs/*.yaml``)               all
``rundir``             the run directory, the contract between notebooks       all
``scenarios``          the nine scenario prompts (``data/scenarios.yaml``)     01, 02
``organism``           the embedded model organism with planted behaviour      (default)
``models``             loading causal LMs, finding their decoder layers        01, 03
``sampling``           same-prompt temperature sampling                        01
``judges``             keyword and Gemini judges, agreement                    02
``activations``        true resid_post capture of every layer                  03
``dataset``            activations joined with labels for later stages         04-07
``sae``                SAE model, SAELens-format export and loading            04
``sae_training``       the fast trainer, conditions, metrics                   04
``probing``            layer-profile and SAE probes with honest statistics     05, 06
``stats``              bootstrap CIs, permutation tests, Holm                  05, 06
``figures``            every figure, one style                                 all
``grid``               papermill over the grid, locally or on Dask             make book
=====================  ======================================================  ==========
"""
